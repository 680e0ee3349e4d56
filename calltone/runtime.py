"""What a process loads once and shares between all calls: the ASR worker (which
owns the Whisper model), the VAD model and a small CPU pool for per-channel work."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from calltone.settings import Settings, get_settings

if TYPE_CHECKING:  # loaded in Runtime.create: importing this module stays cheap
    from calltone.emotion.channel import EmotionModels
    from calltone.speech.vad import SileroVad
    from calltone.speech.worker import AsrWorker


@dataclass
class Runtime:
    settings: Settings
    asr: AsrWorker
    cpu: ThreadPoolExecutor
    vad_model: SileroVad
    emotion: EmotionModels

    @classmethod
    def create(cls, settings: Settings | None = None, cpu_workers: int | None = None) -> "Runtime":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from calltone.emotion.channel import EmotionModels
        from calltone.models.whisper import resolve_model
        from calltone.speech.asr import DecodeOptions, WhisperEngine
        from calltone.speech.vad import SileroVad
        from calltone.speech.worker import AsrWorker

        settings = settings or get_settings()
        limit_blas_threads(settings.blas_threads)
        a = settings.asr
        model_dir, multilingual = resolve_model(a.model, settings.cache_dir)
        engine = WhisperEngine(model_dir, multilingual, a.compute_type, a.cpu_threads)
        options = DecodeOptions(word_timestamps=a.word_timestamps, window_buckets_s=_buckets(a.window_s))
        worker = AsrWorker(engine, options, max_batch=a.max_batch, partial_lag_drop_s=a.partial_lag_drop_s,
                           pack_speech_s=a.batch_pack_s)
        cpu = ThreadPoolExecutor(max_workers=cpu_workers or max(1, os.cpu_count() or 1), thread_name_prefix="calltone-cpu")
        return cls(settings, worker, cpu, SileroVad(), EmotionModels.load(settings.emotion))

    def close(self) -> None:
        self.asr.close()
        self.cpu.shutdown(wait=True)


def limit_blas_threads(n: int) -> None:
    """Cap numpy's BLAS threads for the whole process (0 leaves the default).  The per-channel
    work (features, VAD, the classifier) runs on small matrices from several pool threads at
    once; with the default of one BLAS thread per core, idle BLAS threads spin and take CPU
    from the ASR worker (bench/live.py: server CPU 37 % -> 27 % for one call)."""
    if n > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")


def _buckets(window_s: float) -> tuple[float, ...]:
    """Encoder windows to pad utterances to: the configured one, then 20 and 30 s for longer speech."""
    return tuple(w for w in sorted({float(window_s), 20.0, 30.0}) if w >= window_s)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime(settings: Settings | None = None) -> Runtime:
    """The process-wide runtime, created on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.create(settings)
        return _runtime
