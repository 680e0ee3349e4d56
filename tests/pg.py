"""A throwaway PostgreSQL server on a loopback port for the tests (``postgres`` fixture, one per session).

Import the fixture into a test module (``from .pg import postgres``); the modules that do share one server,
started by the first and stopped at the end of the session.  Uses Debian's ``postgresql`` binaries (``/usr/lib/postgresql/<version>/bin``).  ``initdb`` refuses to run as
root, so as root the server runs as the ``postgres`` user, in a folder of its own under the system temp
dir (pytest's are private to root).  Without the binaries the tests that need it are skipped, except in CI
(``CI`` set), where that is a failure: CI must install them.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
import pytest

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                 if p.parent.parent.name.isdigit() else 0)
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster: ``start()``, ``stop()``, ``create_database()`` -> a URL for it."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self._names = itertools.count(1)

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} {SERVER_OPTIONS}"
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w", "start")

    def stop(self) -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database (``calltone_test_<n>``); its URL."""
        name = f"calltone_test_{next(self._names)}"
        self._cmd("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _bin_dir() -> Path | None:
    if not PG_BINS:
        return None
    return PG_BINS[-1].parent


_running: list[PgServer] = []  # the one server of this session, once started


def _start(bin_dir: Path) -> PgServer:
    root = Path(tempfile.mkdtemp(prefix="calltone-pg-"))
    server = PgServer(bin_dir, root)
    try:
        server.init()
        server.start()
    except subprocess.CalledProcessError as exc:
        log = server.log_tail()
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr}\n{log}")
    return server


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> PgServer:
    """A running PostgreSQL server (``create_database()`` for a fresh database).  Skipped without the
    binaries, a failure in CI."""
    if _running:
        return _running[0]
    bin_dir = _bin_dir()
    why = None
    if bin_dir is None:
        why = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin: Debian's postgresql package)"
    elif importlib.util.find_spec("psycopg_pool") is None:
        why = "psycopg / psycopg_pool not installed (pip install -e '.[scaleout]')"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why + "; CI must install them", pytrace=False)
        pytest.skip(why)
    assert bin_dir is not None
    server = _start(bin_dir)
    _running.append(server)

    def stop() -> None:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        _running.clear()

    request.addfinalizer(stop)
    return server
