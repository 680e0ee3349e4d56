"""Prometheus metrics with ``prometheus_client``.

Counters and histograms belong to one :class:`Metrics` (its own registry, so several
apps in one process — the tests — do not mix).  Gauges read live state at scrape time
(:meth:`Metrics.gauge`).  With ``PROMETHEUS_MULTIPROC_DIR`` set (before the process
starts), counters and histograms of every process sharing that folder are added up
in each scrape (prometheus_client's multiprocess mode); gauges are the scraping
node's own: live calls, ASR lag, readiness — what a load balancer or an autoscaler
acts on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

GaugeReader = Callable[[], float]


class _Gauges(Collector):
    """Gauges read from callbacks at scrape time; a broken one is left out, never the whole scrape."""

    def __init__(self) -> None:
        self.readers: list[tuple[str, str, GaugeReader]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, help, read in self.readers:
            try:
                value = float(read())
            except Exception:  # noqa: BLE001
                continue
            yield GaugeMetricFamily(name, help, value=value)


class Metrics:
    """All server metrics; gauges that read live state are attached by the app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_started = Counter("calltone_calls_started_total", "Calls whose audio stream started (including resumes)",
                                     registry=r)
        self.calls_ended = Counter("calltone_calls_ended_total", "Calls ended, by how", ["how"], registry=r)
        self.audio_seconds = Counter("calltone_audio_seconds_total", "Seconds of call audio received, per role", ["role"],
                                     registry=r)
        self.events = Counter("calltone_events_total", "Events stored and published, by type", ["type"], registry=r)
        self.event_latency = Histogram("calltone_event_latency_seconds",
                                       "Server time from receiving the audio an event describes (its end) to publishing it",
                                       ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.store_latency = Histogram("calltone_store_write_seconds", "Time from emitting an event to its commit in the store",
                                       buckets=STORE_BUCKETS, registry=r)
        self.alerts = Counter("calltone_alerts_total", "Escalation alerts, by transition", ["type"], registry=r)
        self.ingest_errors = Counter("calltone_ingest_errors_total", "Websocket sessions refused or closed with an error",
                                     ["code"], registry=r)
        self.webhooks = Counter("calltone_webhook_deliveries_total", "Webhook delivery attempts, by outcome", ["outcome"],
                                registry=r)
        self.pii_masked = Counter("calltone_pii_masked_total", "PII spans masked in transcripts, by kind", ["kind"], registry=r)
        self.events_not_stored = Counter("calltone_events_not_stored_total",
                                         "Events neither stored nor published because a write of their call failed, by type",
                                         ["type"], registry=r)
        self.calls_refused = Counter("calltone_calls_refused_total", "New calls refused for load (close 1013), by "
                                     "reason: at_capacity, asr_lagging", ["reason"], registry=r)
        self.partials_shed = Counter("calltone_partials_shed_total", "Partial decodes not queued because the node "
                                     "was loaded (server/admission.py)", registry=r)
        self._gauges = _Gauges()
        r.register(self._gauges)

    def gauge(self, name: str, help: str, read: GaugeReader) -> None:
        """A gauge of this node, read when scraped."""
        self._gauges.readers.append((name, help, read))

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0.0 when it has none yet), e.g. ``value("calltone_calls_ended_total", how="stopped")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        """The exposition text: this process's metrics, or every process's with ``PROMETHEUS_MULTIPROC_DIR``."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape)
        scrape.register(self._gauges)
        return generate_latest(scrape)
