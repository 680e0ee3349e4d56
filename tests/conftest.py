"""Shared fixtures: real data from ../shared, and one runtime (real Whisper model) per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPEECH = SHARED / "data" / "speech"
EMOTION_SPEECH = SHARED / "data" / "emotion-speech"
MAKE_CALLS = SHARED / "tools" / "make_calls.py"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (the shared data folder must sit beside the repository)")
    return path


@pytest.fixture(scope="session")
def runtime():
    from calltone.runtime import Runtime
    from calltone.settings import Settings

    rt = Runtime.create(Settings())
    yield rt
    rt.close()
