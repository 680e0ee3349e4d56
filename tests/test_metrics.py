"""Prometheus metrics (prometheus_client): names kept, gauges read at scrape time, and
counters added up across processes in multiprocess mode (real child processes)."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from calltone.server.metrics import Metrics


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_exposition_keeps_the_metric_names_and_reads_gauges_when_scraped():
    m = Metrics()
    m.audio_seconds.labels("customer").inc(1.5)
    m.event_latency.labels("transcript.final").observe(0.3)
    live = [1, 2]
    m.gauge("calltone_active_calls", "Calls streaming audio now", lambda: len(live))
    m.gauge("calltone_broken", "a gauge whose reader fails", lambda: 1 / 0)
    got = samples(m.render())
    assert got[("calltone_audio_seconds_total", (("role", "customer"),))] == 1.5
    assert got[("calltone_event_latency_seconds_bucket", (("le", "0.5"), ("type", "transcript.final")))] == 1
    assert got[("calltone_active_calls", ())] == 2
    live.append(3)
    assert samples(m.render())[("calltone_active_calls", ())] == 3
    assert not any(name == "calltone_broken" for name, _ in got)  # left out, the scrape still works
    assert m.value("calltone_audio_seconds_total", role="customer") == 1.5


CHILD = """
import sys
from calltone.server.metrics import Metrics
m = Metrics()
m.calls_started.inc(int(sys.argv[1]))
m.audio_seconds.labels("agent").inc(float(sys.argv[1]))
"""


def test_multiprocess_mode_adds_up_every_process(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in ("2", "3"):
        subprocess.run([sys.executable, "-c", CHILD, n], env=env, check=True)
    scrape = "from calltone.server.metrics import Metrics; m = Metrics(); m.gauge('calltone_ready', 'r', lambda: 1.0); " \
             "import sys; sys.stdout.buffer.write(m.render())"
    out = subprocess.run([sys.executable, "-c", scrape], env=env, check=True, capture_output=True).stdout
    got = samples(out)
    assert got[("calltone_calls_started_total", ())] == 5
    assert got[("calltone_audio_seconds_total", (("role", "agent"),))] == 5.0
    assert got[("calltone_ready", ())] == 1.0
