"""A feed client that goes away in the middle of a send ends its feed quietly (one debug line, no traceback), on a
real server on loopback (SQLite): a raw TCP client upgrades to the alert feed, leaves its receive buffer full
while the server replays many large open alerts, and resets the connection.  A real failure of the feed (a
stored alert it cannot send) is still logged with its traceback and answered ``internal_error``."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from calltone.server.app import ServerThread, create_app
from calltone.server.sqlite import SqliteRepository
from calltone.settings import ServerSettings, Settings

SUP = "supervisor-tok-01"
FEEDS = "calltone.server.feeds"
ALERTS = 1000  # the replay's limit of open alerts (server/feeds.py)
REASON_BYTES = 50_000  # 1000 x 50 kB: far more than the loopback socket buffers hold


def seed_alerts(db: Path, t: float | None) -> None:
    repo = SqliteRepository(db)
    with repo.transaction():
        repo.upsert_call({"call_id": "c1", "status": "ended", "agent_id": "a1", "started_at": 1.0, "updated_at": 1.0})
        for i in range(ALERTS):
            repo.insert_alert({"alert_id": f"al-{i}", "call_id": "c1", "agent_id": "a1", "channel": "customer",
                               "reason": "x" * REASON_BYTES, "status": "open", "t": t, "seq": i + 1,
                               "raised_at": 100.0 + i, "evidence": {}, "excerpt": []})
    repo.close()


def serve(data: Path, runtime) -> ServerThread:
    s = Settings()
    s.server = ServerSettings(data_dir=data, tokens={SUP: "supervisor:sam"})
    return ServerThread(create_app(s, runtime), s)


def feed_records(caplog, deadline_s: float = 60.0) -> list[logging.LogRecord]:
    """The feeds' log records, once the feed has written one (its end)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        got = [r for r in caplog.records if r.name == FEEDS]
        if got:
            return got
        time.sleep(0.05)
    pytest.fail("the alert feed never ended")


def test_a_client_that_leaves_mid_send_ends_the_feed_quietly(tmp_path: Path, runtime, caplog) -> None:
    seed_alerts(tmp_path / "calltone.db", t=1.0)
    caplog.set_level(logging.DEBUG, logger=FEEDS)
    with serve(tmp_path, runtime) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the server's sends back up at once
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(b"GET /v1/alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     b"Authorization: Bearer " + SUP.encode() + b"\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        time.sleep(0.5)  # the replay fills the socket buffers and waits for the client to read
        assert not [r for r in caplog.records if r.name == FEEDS], "the feed ended before the client left"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, as a browser tab killed or a network gone
        records = feed_records(caplog)
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in records] == [
        (logging.DEBUG, "alert feed: the client left during a send (code 1006)", None)]


def test_a_real_failure_of_the_feed_is_still_logged_with_its_traceback(tmp_path: Path, runtime, caplog) -> None:
    seed_alerts(tmp_path / "calltone.db", t=None)  # an alert row without its call time cannot be sent
    with serve(tmp_path, runtime) as srv:
        with connect(f"{srv.ws}/v1/alerts", additional_headers={"Authorization": f"Bearer {SUP}"}) as ws:
            frame = json.loads(ws.recv(timeout=30))
        records = feed_records(caplog)
    assert frame["type"] == "error" and frame["code"] == "internal_error"
    [record] = records
    assert record.levelno == logging.ERROR and record.getMessage() == "alert feed failed"
    assert record.exc_info is not None and "validation error" in str(record.exc_info[1])
