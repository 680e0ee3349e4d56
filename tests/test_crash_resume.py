"""kill -9 of a real ``calltone serve`` mid-call: the restarted server resumes the call at the
call time of the audio it had taken (the position stored on the call row), a producer that
re-sends from ``started.t_offset`` puts every later event at its true call time, seqs run on
without gaps or duplicates, and everything a subscriber saw was stored."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from calltone.speech.audio import encode_pcm

from .conftest import needs_shared
from .test_server import INGEST, STEREO, SUP, TOKENS, check_seqs, load_stereo, read_events, rest, start_msg, ws_url
from .test_store_failures import Listener, sync

pytestmark = needs_shared(STEREO)


class Serve:
    """``calltone serve`` in a subprocess on a free loopback port (settings from CALLTONE_* variables, ``env``)."""

    def __init__(self, data_dir: Path, log: Path, env: dict[str, str] | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = log
        env = {**os.environ, "CALLTONE_SERVER__DATA_DIR": str(data_dir), "CALLTONE_SERVER__TOKENS": json.dumps(TOKENS),
               **(env or {})}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "calltone.cli", "serve", "--host", "127.0.0.1",
                                          "--port", str(self.port)], env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_for(self, path: str, timeout: float = 300.0) -> "Serve":
        """Until ``path`` (``/healthz``: up; ``/readyz``: the speech runtime loaded too) answers 200."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"calltone serve exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"calltone serve: {path} never answered 200:\n{self.output()}"
            try:
                if rest(self, path)[0] == 200:
                    return self
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)

    def wait_ready(self, timeout: float = 300.0) -> "Serve":
        return self.wait_for("/readyz", timeout)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill9()


def wait_position(srv: Serve, call_id: str, position: float, timeout: float = 60.0) -> None:
    """Until the call row's stored position (duration_s) reaches ``position``."""
    deadline = time.monotonic() + timeout
    while (rest(srv, f"/v1/calls/{call_id}", SUP)[1].get("duration_s") or 0.0) < position - 1e-3:
        assert time.monotonic() < deadline, f"the stored position of {call_id} never reached {position} s"
        time.sleep(0.05)


def agent_final(events: list[dict], after: float = 0.0) -> dict:
    return next(e for e in events if e["type"] == "transcript.final" and e["channel"] == "agent" and e["start"] >= after)


def test_kill_9_mid_call_resumes_at_the_audio_taken(tmp_path):
    audio, rate = load_stereo()  # 5.0 s; the agent says one line, ending near 2.7 s
    two = np.concatenate([audio, audio])  # the second copy is streamed after the crash
    copy_s = len(audio) / rate
    step = rate // 5
    log = tmp_path / "serve.log"
    srv = Serve(tmp_path / "data", log).wait_ready()
    seen: list[dict] = []
    try:
        with connect(ws_url(srv, "/v1/calls/crash-1/audio", INGEST), max_size=None) as ws:
            ws.send(start_msg(events=True))
            assert json.loads(ws.recv(timeout=10))["type"] == "started"
            feed = Listener(ws_url(srv, "/v1/calls/crash-1/events", SUP))
            for i in range(0, len(audio), step):
                ws.send(encode_pcm(two[i : i + step], "pcm_s16le"))
            sync(ws, seen)  # the server has taken all 5 s
            while not any(e["type"] == "transcript.final" and e["channel"] == "agent" for e in seen):
                seen.append(json.loads(ws.recv(timeout=60)))
            wait_position(srv, "crash-1", copy_s)
            srv.kill9()  # mid-call: the producer is still connected, the customer's line still open
            try:
                while True:
                    seen.append(json.loads(ws.recv(timeout=30)))
            except ConnectionClosed:
                pass
        seen += feed.close()
    finally:
        srv.stop()

    srv = Serve(tmp_path / "data", log).wait_ready()
    try:
        status, call = rest(srv, "/v1/calls/crash-1", SUP)
        assert status == 200 and call["status"] == "interrupted"
        stored = read_events(srv, "crash-1", until="never", timeout=2)
        check_seqs(stored)
        assert stored[0]["seq"] == 1
        by_seq = {e["seq"]: e for e in stored}
        for e in seen:  # everything anyone saw is stored, as they saw it
            assert by_seq.get(e["seq"]) == e, e["seq"]
        with connect(ws_url(srv, "/v1/calls/crash-1/audio", INGEST), max_size=None) as ws:
            ws.send(start_msg(events=True))
            started = json.loads(ws.recv(timeout=10))
            assert started["resumed"] is True and started["seq"] == stored[-1]["seq"]
            assert started["t_offset"] == pytest.approx(copy_s, abs=1e-3)  # not the last event's end
            for i in range(int(round(started["t_offset"] * rate)), len(two), step):  # re-send from the offset
                ws.send(encode_pcm(two[i : i + step], "pcm_s16le"))
            ws.send(json.dumps({"type": "stop"}))
            after: list[dict] = []
            while not after or after[-1]["type"] != "call.ended":
                after.append(json.loads(ws.recv(timeout=60)))
        assert after[0]["type"] == "call.started" and after[0]["seq"] == stored[-1]["seq"] + 1
        assert after[0]["t"] == pytest.approx(copy_s, abs=1e-3)
        everything = read_events(srv, "crash-1")
        check_seqs(everything)
        assert everything[0]["seq"] == 1 and len({e["seq"] for e in everything}) == len(everything)
        assert everything[-1]["summary"]["duration_s"] == pytest.approx(2 * copy_s, abs=0.02)
        # the second copy, heard after the crash, lands exactly one copy later than the first
        first, second = agent_final(stored), agent_final(after, copy_s)
        assert second["text"] == first["text"]
        assert second["start"] == pytest.approx(first["start"] + copy_s, abs=0.02)
        assert second["end"] == pytest.approx(first["end"] + copy_s, abs=0.02)
    finally:
        srv.stop()
