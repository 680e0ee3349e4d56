"""Raw call audio on disk (``privacy.keep_audio``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from calltone.speech.audio import SAMPLE_RATE

MAX_SESSIONS_PER_MS = 1000  # sessions of one call started within one millisecond before refusing (never in practice)


def session_stamp(now: float) -> str:
    """A session's name: UTC to the millisecond, fixed width, so names sort as sessions started."""
    ms = int(now * 1000) % 1000
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{ms:03d}"


class AudioKeeper:
    """Writes each role's 16 kHz audio to ``<audio_dir>/<call_id>/<role>-<session>.wav`` (privacy.keep_audio).

    ``<session>`` is :func:`session_stamp` and a counter (``20261201T120000.123-000``): every session of a call (a
    resumed call, a reconnect within the same millisecond) gets files of its own, created exclusively, so no session
    overwrites another's audio, and the playback (``server/playback.py``) joins them in the order they started."""

    def __init__(self, directory: Path, roles: list[str], started_at: float | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = session_stamp(time.time() if started_at is None else started_at)
        for n in range(MAX_SESSIONS_PER_MS):
            fds = _create_all([directory / f"{r}-{stamp}-{n:03d}.wav" for r in roles])
            if fds is not None:
                break
        else:
            raise FileExistsError(f"{MAX_SESSIONS_PER_MS} audio sessions of one call in {directory} at {stamp}")
        self.files = {r: sf.SoundFile(fd, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="WAV")
                      for r, fd in zip(roles, fds)}

    def write(self, audio: dict[str, np.ndarray]) -> None:
        for role, x in audio.items():
            f = self.files.get(role)
            if f is not None and len(x):
                f.write(x)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _create_all(paths: list[Path]) -> list[int] | None:
    """Create every file, none of which may exist yet: their descriptors, or None (and nothing left) if one did."""
    fds: list[int] = []
    for path in paths:
        try:
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as before
        except FileExistsError:
            for made, fd in zip(paths, fds):
                os.close(fd)
                made.unlink()
            return None
    return fds
