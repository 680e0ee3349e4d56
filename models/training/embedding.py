"""Whisper-encoder utterance embedding for training and evaluation.

The live path gets the same vector from the transcriber's own encoder pass
(``WhisperEngine.embedding`` in ``speech/asr.py``); this wrapper calls that same code
on a clip, so training and serving cannot drift apart: log-mel of the clip padded to
a 10 s window, CTranslate2 encoder (multilingual base, int8), mean ‖ std pooled over
the encoder frames that cover the audio -> (1024,) float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def default_model_dir() -> Path:
    """``CALLTONE_WHISPER_DIR`` if set, else the installed multilingual base model."""
    if os.environ.get("CALLTONE_WHISPER_DIR"):
        return Path(os.environ["CALLTONE_WHISPER_DIR"])
    from calltone.models.whisper import install_base
    from calltone.settings import Settings

    return install_base(Settings().cache_dir)


class WhisperEmbedder:
    def __init__(self, model_dir: str | Path | None = None, cpu_threads: int = 1) -> None:
        from calltone.speech.asr import WhisperEngine

        self.engine = WhisperEngine(Path(model_dir) if model_dir else default_model_dir(), multilingual=True, cpu_threads=cpu_threads)

    @property
    def dim(self) -> int:
        return 2 * 512

    def embed(self, audio: np.ndarray) -> np.ndarray:
        return self.engine.embedding(np.asarray(audio, dtype=np.float32))
