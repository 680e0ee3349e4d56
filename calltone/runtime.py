"""What a process loads once and shares between all calls: the ASR worker (whose
decoders own the Whisper model, in this process or in worker processes of their own),
the VAD model and a small CPU pool for per-channel work."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from calltone.settings import AsrSettings, Settings, get_settings

if TYPE_CHECKING:  # loaded in Runtime.create: importing this module stays cheap
    from calltone.emotion.channel import EmotionModels
    from calltone.speech.engine_process import EngineSpec
    from calltone.speech.vad import SileroVad
    from calltone.speech.worker import AsrWorker, Decoder


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
        from calltone.speech.asr import DecodeOptions
        from calltone.speech.engine_process import EngineSpec
        from calltone.speech.vad import SileroVad
        from calltone.speech.worker import AsrWorker

        settings = settings or get_settings()
        limit_blas_threads(settings.blas_threads)
        a = settings.asr
        model_dir, multilingual = resolve_model(a.model, settings.cache_dir)
        spec = EngineSpec(model_dir, multilingual, a.compute_type, a.cpu_threads, a.device)
        options = DecodeOptions(word_timestamps=a.word_timestamps, window_buckets_s=_buckets(a.window_s),
                                hotwords=tuple(a.hotwords), prompts=tuple(a.prompts.items()),
                                languages=tuple(a.languages))
        worker = AsrWorker(open_decoders(spec, asr_workers(a)), options, max_batch=asr_max_batch(a),
                           partial_lag_drop_s=a.partial_lag_drop_s, pack_speech_s=a.batch_pack_s)
        cpu = ThreadPoolExecutor(max_workers=cpu_workers or max(1, os.cpu_count() or 1), thread_name_prefix="calltone-cpu")
        return cls(settings, worker, cpu, SileroVad(), EmotionModels.load(settings.emotion))

    def close(self) -> None:
        self.asr.close()
        self.cpu.shutdown(wait=True)


def asr_workers(a: AsrSettings) -> int:
    """Decoders of the ASR worker: ``asr.workers``, or one per core on cpu and one on cuda."""
    if a.workers:
        return a.workers
    return 1 if a.device == "cuda" else max(1, os.cpu_count() or 1)


def asr_max_batch(a: AsrSettings) -> int:
    """Requests per decode: ``asr.max_batch``, or 8 on cpu and 32 on cuda (a GPU is only busy with big batches)."""
    return a.max_batch or (32 if a.device == "cuda" else 8)


def open_decoders(spec: EngineSpec, n: int) -> list[Decoder]:
    """One decoder in this process, or ``n`` worker processes loading their models at the same time."""
    if n == 1:
        from calltone.speech.asr import WhisperEngine

        return [WhisperEngine(spec.model_dir, spec.multilingual, spec.compute_type, spec.cpu_threads, spec.device)]
    from calltone.speech.engine_process import EngineProcess

    procs = [EngineProcess(spec, f"calltone-asr-{i}") for i in range(n)]
    try:
        for p in procs:
            p.wait_ready()
    except BaseException:
        for p in procs:
            p.close()
        raise
    return procs


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
