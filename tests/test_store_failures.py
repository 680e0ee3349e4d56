"""A store that cannot write, on a real small filesystem: a tmpfs mounted as the server's data dir
and filled up mid-call.  Nothing unstored is published, readiness, new calls, the producer, the
supervisor feed and the metrics all say so, and the resumed call reuses no seq anyone saw."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from calltone.server.app import ServerThread, create_app
from calltone.speech.audio import encode_pcm

from .conftest import needs_shared
from .test_server import ADMIN, INGEST, STEREO, SUP, check_seqs, expect_refusal, load_stereo, make_settings, read_events, \
    rest, start_msg, ws_url

pytestmark = needs_shared(STEREO)


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MB tmpfs (we run as root in CI); skipped where mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {e}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it (delete it to free the space)."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    return path


class Listener(threading.Thread):
    """Reads a feed websocket in the background until told to stop or it closes."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.got: list[dict] = []
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.start()
        assert self.connected.wait(30), f"could not connect to {url}"

    def run(self) -> None:
        with connect(self.url) as ws:
            self.connected.set()
            while not self.stop.is_set():
                try:
                    self.got.append(json.loads(ws.recv(timeout=0.2)))
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return

    def close(self) -> list[dict]:
        self.stop.set()
        self.join(10)
        return self.got


def sync(ws, echoed: list[dict]) -> None:
    """Ping and read up to the pong: every frame sent before it has been pushed into the pipeline."""
    ws.send(json.dumps({"type": "ping"}))
    while (msg := json.loads(ws.recv(timeout=30)))["type"] != "pong":
        echoed.append(msg)


def test_full_disk_is_refused_not_lost(small_fs, runtime):
    audio, rate = load_stereo()
    audio = np.concatenate([audio] * 6)  # 30 s: long enough for the store to fail mid-call
    step = rate // 5
    settings = make_settings(small_fs)
    srv = ServerThread(create_app(settings, runtime), settings).start().wait_ready()
    filler = None
    try:
        alerts = Listener(ws_url(srv, "/v1/alerts", SUP))
        with connect(ws_url(srv, "/v1/calls/full-1/audio", INGEST), max_size=None) as ws:
            ws.send(start_msg(events=True))
            assert json.loads(ws.recv(timeout=10))["type"] == "started"
            feed = Listener(ws_url(srv, "/v1/calls/full-1/events", SUP))
            echoed: list[dict] = []
            sent = 0
            while len(echoed) < 3 and sent < 15 * rate:  # a few events stored and published before the disk fills
                for i in range(sent, sent + rate, step):  # one more second while the disk has room
                    ws.send(encode_pcm(audio[i : i + step], "pcm_s16le"))
                sent += rate
                sync(ws, echoed)
            while len(echoed) < 3:
                echoed.append(json.loads(ws.recv(timeout=30)))
            filler = fill(small_fs)
            try:  # keep streaming until the server cuts the producer off
                for i in range(sent, len(audio), step):
                    ws.send(encode_pcm(audio[i : i + step], "pcm_s16le"))
            except ConnectionClosed:
                pass
            code = close = None
            try:
                while True:
                    msg = json.loads(ws.recv(timeout=60))
                    if msg["type"] == "error":
                        code = msg["code"]
                    else:
                        echoed.append(msg)
            except ConnectionClosed as e:
                close = e.rcvd.code if e.rcvd else None
        assert (code, close) == ("store_unavailable", 1013)
        seen = echoed + feed.close()

        # readiness, new calls, metrics and the supervisors' feed say so
        status, ready = rest(srv, "/readyz")
        assert status == 503 and ready["ready"] is False and ready["reason"].startswith("store_unavailable")
        with connect(ws_url(srv, "/v1/calls/full-2/audio", INGEST)) as ws2:
            ws2.send(start_msg())
            expect_refusal(ws2, "store_unavailable", 1013)
        status, text = rest(srv, "/metrics", ADMIN)
        # the refusal is counted; events emitted after the failed write (if any came before the producer was cut
        # off: with one voice score per utterance the failed write may be a position save) are counted as not stored
        refused = [ln for ln in text.splitlines() if ln.startswith('calltone_ingest_errors_total{code="store_unavailable"}')]
        assert status == 200 and sum(float(ln.rsplit(" ", 1)[1]) for ln in refused) >= 1, refused
        assert "# TYPE calltone_events_not_stored_total counter" in text
        got_alerts = alerts.close()
        failed = [a for a in got_alerts if a["type"] == "store.failed"]
        assert failed and failed[0]["call_id"] == "full-1" and failed[0]["reason"]

        # everything anyone saw is stored, byte for byte, with no gaps
        stored = read_events(srv, "full-1", until="never", timeout=2)
        check_seqs(stored)
        assert stored[0]["seq"] == 1
        by_seq = {e["seq"]: e for e in stored}
        for e in seen:
            assert by_seq.get(e["seq"]) == e, e["seq"]

        # space again: ready once a probe write succeeds; the call resumes after the last stored seq
        filler.unlink()
        filler = None
        deadline = time.monotonic() + 30
        while rest(srv, "/readyz")[0] != 200:  # each poll probes the store (a write at most once a second)
            assert time.monotonic() < deadline, "the store did not come back after the space was freed"
        _, row = rest(srv, "/v1/calls/full-1", SUP)
        with connect(ws_url(srv, "/v1/calls/full-1/audio", INGEST), max_size=None) as ws:
            ws.send(start_msg(events=True))
            started = json.loads(ws.recv(timeout=10))
            assert started["resumed"] is True and started["seq"] == stored[-1]["seq"]
            assert started["t_offset"] == pytest.approx(row["duration_s"], abs=1e-3)
            start = int(round(started["t_offset"] * rate))
            for i in range(start, start + 2 * rate, step):
                ws.send(encode_pcm(audio[i : i + step], "pcm_s16le"))
            ws.send(json.dumps({"type": "stop"}))
            after: list[dict] = []
            while not after or after[-1]["type"] != "call.ended":
                after.append(json.loads(ws.recv(timeout=60)))
        assert after[0]["type"] == "call.started" and after[0]["seq"] == stored[-1]["seq"] + 1
        everything = read_events(srv, "full-1")
        check_seqs(everything)
        assert everything[0]["seq"] == 1 and everything[-1]["type"] == "call.ended"
    finally:
        if filler is not None:
            filler.unlink()
        srv.stop()
