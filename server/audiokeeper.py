"""Raw call audio on disk (``privacy.keep_audio``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


class AudioKeeper:
    """Writes each role's 16 kHz audio to ``<audio_dir>/<call_id>/<role>-<session>.wav`` (privacy.keep_audio)."""

    def __init__(self, directory: Path, roles: list[str]) -> None:
        import soundfile as sf

        directory.mkdir(parents=True, exist_ok=True)
        session = time.strftime("%Y%m%dT%H%M%S")
        self.files = {r: sf.SoundFile(directory / f"{r}-{session}.wav", "w", samplerate=16000, channels=1, subtype="PCM_16")
                      for r in roles}

    def write(self, audio: dict[str, np.ndarray]) -> None:
        for role, x in audio.items():
            f = self.files.get(role)
            if f is not None and len(x):
                f.write(x)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
