"""Prometheus metrics in the text exposition format (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from typing import Callable, Iterable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(float(v))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, labels
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self._values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        items = list(self._values.items()) or ([((), 0.0)] if not self.labelnames else [])
        for lv, v in items:
            lines.append(f"{self.name}{_labels(self.labelnames, lv)} {_num(v)}")
        return lines


class Gauge(_Metric):
    """A gauge read from a callback at scrape time (or set directly)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, fn: Callable[[], float | dict[tuple, float]] | None = None,
                 labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labels)
        self.fn = fn
        self._values: dict[tuple, float] = {}

    def set(self, value: float, *labels: str) -> None:
        self._values[labels] = value

    def render(self) -> list[str]:
        lines = self.header()
        values = self._values
        if self.fn is not None:
            v = self.fn()
            values = v if isinstance(v, dict) else {(): v}
        for lv, v in values.items():
            lines.append(f"{self.name}{_labels(self.labelnames, lv)} {_num(v)}")
        return lines


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple, list] = {}  # labels -> [counts per bucket..., sum, count]
        self._recent: dict[tuple, list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            d = self._data.get(labels)
            if d is None:
                d = self._data[labels] = [0] * len(self.buckets) + [0.0, 0]
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                d[i] += 1
            d[-2] += value
            d[-1] += 1
            r = self._recent.setdefault(labels, [])
            r.append(value)
            if len(r) > 2048:
                del r[:1024]

    def quantile(self, q: float, *labels: str) -> float | None:
        r = sorted(self._recent.get(labels, []))
        if not r:
            return None
        return r[min(len(r) - 1, int(q * len(r)))]

    def render(self) -> list[str]:
        lines = self.header()
        for lv, d in list(self._data.items()):
            cum = 0
            for b, c in zip(self.buckets, d):
                cum += c
                le = 'le="' + _num(b) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, lv, le)} {cum}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.labelnames, lv, inf)} {d[-1]}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, lv)} {_num(d[-2])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, lv)} {d[-1]}")
        return lines


class Metrics:
    """All server metrics; gauges that read live state are attached by the app."""

    def __init__(self) -> None:
        self.calls_started = Counter("calltone_calls_started_total", "Calls whose audio stream started (including resumes)")
        self.calls_ended = Counter("calltone_calls_ended_total", "Calls ended, by how", ("how",))
        self.audio_seconds = Counter("calltone_audio_seconds_total", "Seconds of call audio received, per role", ("role",))
        self.events = Counter("calltone_events_total", "Events stored and published, by type", ("type",))
        self.event_latency = Histogram("calltone_event_latency_seconds",
                                       "Server time from receiving the audio an event describes (its end) to publishing it",
                                       ("type",))
        self.store_latency = Histogram("calltone_store_write_seconds", "Time from emitting an event to its commit in the store",
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.alerts = Counter("calltone_alerts_total", "Escalation alerts, by transition", ("type",))
        self.ingest_errors = Counter("calltone_ingest_errors_total", "Websocket sessions refused or closed with an error", ("code",))
        self.webhooks = Counter("calltone_webhook_deliveries_total", "Webhook delivery attempts, by outcome", ("outcome",))
        self.pii_masked = Counter("calltone_pii_masked_total", "PII spans masked in transcripts, by kind", ("kind",))
        self.events_not_stored = Counter("calltone_events_not_stored_total",
                                         "Events neither stored nor published because a write of their call failed, by type",
                                         ("type",))
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help: str, fn: Callable, labels: tuple[str, ...] = ()) -> None:
        self.gauges.append(Gauge(name, help, fn, labels))

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.calls_started, self.calls_ended, self.audio_seconds, self.events, self.event_latency,
                  self.store_latency, self.alerts, self.ingest_errors, self.webhooks, self.pii_masked, self.events_not_stored,
                  *self.gauges):
            try:
                lines.extend(m.render())
            except Exception as exc:  # a broken gauge must not break the scrape
                lines.append(f"# {m.name} unavailable: {exc!r}")
        return "\n".join(lines) + "\n"
