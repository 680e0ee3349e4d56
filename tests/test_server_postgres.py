"""The live service on PostgreSQL (``server.database_url``): a real uvicorn server with the real runtime,
one short call streamed in; its events are stored in PostgreSQL and read back through the REST API and the
event feed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calltone.server.app import ServerThread, create_app

from .pg import PgServer, postgres  # noqa: F401 -- the session's PostgreSQL server
from .test_server import STEREO, SUP, check_seqs, finals, load_stereo, make_settings, read_events, rest, stream

pytestmark = pytest.mark.skipif(not STEREO.is_file(), reason=f"{STEREO} not available")


def test_a_live_call_is_stored_in_postgres_and_read_back(tmp_path: Path, runtime, postgres: PgServer) -> None:
    import psycopg

    from calltone.server.postgres import PostgresRepository

    url = postgres.create_database()
    settings = make_settings(tmp_path / "data", database_url=url)
    app = create_app(settings, runtime)
    with ServerThread(app, settings) as srv:
        srv.wait_ready()
        assert isinstance(srv.services.store.repo, PostgresRepository)
        audio, rate = load_stereo()
        echoed = stream(srv, "pg-1", audio, rate)
        assert echoed[0]["type"] == "call.started" and echoed[-1]["type"] == "call.ended"
        check_seqs(echoed)
        assert "horizon" in finals(echoed)["agent"].lower()

        with psycopg.connect(url) as conn:  # in PostgreSQL, as published
            stored = conn.execute("SELECT seq, type, body FROM events WHERE call_id=%s ORDER BY seq", ("pg-1",)).fetchall()
            row = conn.execute("SELECT status, last_seq, agent_id FROM calls WHERE call_id=%s", ("pg-1",)).fetchone()
        assert [(seq, typ) for seq, typ, _ in stored] == [(e["seq"], e["type"]) for e in echoed]
        assert [json.loads(body) for _, _, body in stored] == echoed
        assert row == ("ended", echoed[-1]["seq"], "a1")
        assert not (tmp_path / "data" / "calltone.db").exists()  # no SQLite beside it

        status, detail = rest(srv, "/v1/calls/pg-1", SUP)  # through the REST API
        assert status == 200, detail
        assert detail["status"] == "ended" and detail["last_seq"] == echoed[-1]["seq"] and detail["agent_id"] == "a1"
        assert detail["summary"]["end_reason"] == "stopped"
        assert "horizon" in " ".join(seg["text"] for seg in detail["transcript"]).lower()
        status, listing = rest(srv, "/v1/calls?status=ended", SUP)
        assert status == 200 and [c["call_id"] for c in listing["calls"]] == ["pg-1"]
        assert read_events(srv, "pg-1") == echoed  # the event feed replays them from PostgreSQL
        assert rest(srv, "/readyz")[0] == 200
