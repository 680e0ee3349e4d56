"""Kept call audio (``privacy.keep_audio``): every session of a call gets files of its own, even sessions started
within the same second or millisecond (a resumed call, a reconnect), none overwrites another's audio, and the
playback (``server/playback.py``) finds them in the order they started."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from calltone.server.audiokeeper import AudioKeeper, session_stamp
from calltone.server.playback import locate

ROLES = ["customer", "agent"]
SESSIONS = 5


def tone(i: int, role: int) -> np.ndarray:
    """Half a second of a sine, different for each session and role (PCM16 keeps it to 1/32768)."""
    t = np.arange(8000) / 16000
    return (0.1 * (1 + i) * np.sin(2 * np.pi * (200 + 100 * role) * t)).astype(np.float32)


def test_sessions_started_back_to_back_keep_their_own_audio_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "call-1"
    for i in range(SESSIONS):  # back to back: the same second, mostly the same millisecond
        keeper = AudioKeeper(folder, ROLES)
        keeper.write({r: tone(i, k) for k, r in enumerate(ROLES)})
        keeper.close()
    assert len(list(folder.glob("*.wav"))) == SESSIONS * len(ROLES)
    kept = locate(folder, None)
    assert kept is not None and kept.source == "kept"
    for k, role in enumerate(ROLES):
        files = kept.kept[role]
        assert len(files) == SESSIONS
        for i, path in enumerate(files):  # the playback's order is the order the sessions started
            audio, rate = sf.read(path, dtype="float32")
            assert rate == 16000 and np.allclose(audio, tone(i, k), atol=1 / 16384)


def test_sessions_of_the_same_millisecond_take_the_next_counter_for_every_role(tmp_path: Path) -> None:
    folder = tmp_path / "call-2"
    at = 1_764_590_400.25  # 2025-12-01 12:00:00.250 UTC
    assert session_stamp(at) == "20251201T120000.250"
    AudioKeeper(folder, ROLES, started_at=at).close()
    foreign = folder / "agent-20251201T120000.250-001.wav"  # the next name of one role is taken already
    foreign.write_bytes(b"not ours")
    AudioKeeper(folder, ROLES, started_at=at).close()
    AudioKeeper(folder, ROLES, started_at=at).close()
    assert sorted(p.name for p in folder.iterdir()) == [
        "agent-20251201T120000.250-000.wav", "agent-20251201T120000.250-001.wav", "agent-20251201T120000.250-002.wav",
        "agent-20251201T120000.250-003.wav",
        "customer-20251201T120000.250-000.wav", "customer-20251201T120000.250-002.wav",
        "customer-20251201T120000.250-003.wav"]
    assert foreign.read_bytes() == b"not ours"  # left as it was; its session moved on to -002 for every role
