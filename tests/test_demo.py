"""`make run` twice on the same data folder: the demo calls stream the second time too (their ids are new
each run, since stored call ids are kept and an ended call cannot be reopened)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_streams(data_dir) -> str:
    """Start `calltone serve --demo`, wait until a demo call is live, stop it; the live call's id."""
    port = _free_port()
    env = dict(os.environ, CALLTONE_SERVER__DATA_DIR=str(data_dir))
    proc = subprocess.Popen([sys.executable, "-m", "calltone.cli", "serve", "--demo", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if json.loads(r.read())["active_calls"] >= 1:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("no demo call went live")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    started = [line.rsplit(" as ", 1)[1] for line in err.splitlines() if "demo: streaming" in line]
    assert started and "refused the call" not in err, err[-2000:]  # (stopping cuts the live one with 1012)
    return started[0]


def test_a_second_demo_run_on_the_same_data_streams_new_calls(tmp_path):
    first = _demo_streams(tmp_path)
    second = _demo_streams(tmp_path)
    assert first != second
