"""Shared fixtures: real data from ../shared, and one runtime (real Whisper model) per test session.

Missing shared data follows one rule (:func:`missing_shared`): under ``CI`` (any value but
empty, ``0``, ``false``, ``no``) it fails the test with a message saying what is missing;
locally the test is skipped with that reason.  Mark tests or modules with
:func:`needs_shared`; fixtures and helpers call :func:`require`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPEECH = SHARED / "data" / "speech"
EMOTION_SPEECH = SHARED / "data" / "emotion-speech"
MAKE_CALLS = SHARED / "tools" / "make_calls.py"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_shared(path: Path) -> NoReturn:
    """Fail (under CI) or skip (locally) because ``path`` from the shared data folder is missing."""
    message = f"test data missing: {path} (the shared data folder must sit beside the repository, at {SHARED})"
    if in_ci():
        pytest.fail(f"{message}; under CI missing shared data is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def require(path: Path) -> Path:
    """``path`` if it exists, else :func:`missing_shared`."""
    if not path.exists():
        missing_shared(path)
    return path


def needs_shared(*paths: Path) -> pytest.MarkDecorator:
    """Mark a test (or a module, as ``pytestmark``) as needing these shared files or folders."""
    return pytest.mark.shared(*paths)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared(*paths): needs these paths from ../shared (a failure under CI when "
                                       "missing, a skip locally)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("shared"):
        for path in mark.args:
            require(Path(path))


@pytest.fixture(scope="session")
def runtime():
    from calltone.runtime import Runtime
    from calltone.settings import Settings

    rt = Runtime.create(Settings())
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def engine():
    """The Whisper model in this test process (the runtime's decoders may be worker processes), for tests
    that call :class:`WhisperEngine` or faster-whisper's own ``transcribe`` directly."""
    from calltone.models.whisper import resolve_model
    from calltone.runtime import limit_blas_threads
    from calltone.settings import Settings
    from calltone.speech.asr import WhisperEngine

    settings = Settings()
    limit_blas_threads(settings.blas_threads)
    model_dir, multilingual = resolve_model(settings.asr.model, settings.cache_dir)
    return WhisperEngine(model_dir, multilingual, settings.asr.compute_type, settings.asr.cpu_threads, settings.asr.device)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's Chromium (make test installs it); Playwright never downloads one here
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (the page tests)."""
    playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        yield b
        b.close()


@contextmanager
def page_server(tmp_path_factory, runtime, tokens: dict[str, str]) -> Iterator:
    """A real server (uvicorn on loopback) with its own data folder and these tokens, ready: the page tests' server."""
    from calltone.server.app import ServerThread, create_app
    from calltone.settings import ServerSettings, Settings

    s = Settings()
    s.server = ServerSettings(data_dir=tmp_path_factory.mktemp("data"), tokens=dict(tokens))
    with ServerThread(create_app(s, runtime), s) as srv:
        srv.wait_ready()
        yield srv
