"""The ASR worker's decoders: worker processes that decode as the in-process model does, share the queue,
lose no final when one dies, and a CUDA decoder where the machine has a GPU."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from calltone.models.whisper import resolve_model
from calltone.runtime import asr_max_batch, asr_workers, limit_blas_threads, open_decoders
from calltone.settings import AsrSettings, Settings
from calltone.speech.asr import DecodeRequest
from calltone.speech.audio import load_recording
from calltone.speech.engine_process import EngineSpec
from calltone.speech.worker import AsrWorker
from tests.conftest import EMOTION_SPEECH, SPEECH, needs_shared, require

pytestmark = needs_shared(SPEECH / "jfk.flac", EMOTION_SPEECH / "casia")

CASIA = ["casia/liuchanhg/angry/201.flac", "casia/liuchanhg/angry/202.flac", "casia/liuchanhg/angry/203.flac"]


def _spec(device: str = "cpu", compute_type: str = "auto") -> EngineSpec:
    model_dir, multilingual = resolve_model("base", Settings().cache_dir)
    return EngineSpec(model_dir, multilingual, compute_type, 1, device)


def _requests() -> list[DecodeRequest]:
    out = [DecodeRequest(load_recording(require(EMOTION_SPEECH / p)).channels["customer"], "zh", embed=True) for p in CASIA]
    jfk = load_recording(require(SPEECH / "jfk.flac")).channels["customer"]
    return out + [DecodeRequest(jfk, "en", embed=True)]


@pytest.fixture(scope="module")
def two_processes():
    worker = AsrWorker(open_decoders(_spec(), 2))
    yield worker
    worker.close()


def test_worker_processes_decode_as_the_model_in_this_process(two_processes):
    limit_blas_threads(1)  # as Runtime.create does (and the worker processes): the log-mel features depend on it
    local = AsrWorker(open_decoders(_spec(), 1))
    try:
        for request in _requests():
            here, there = local.decode_sync([request])[0], two_processes.decode_sync([request])[0]
            assert there.text and there.text == here.text
            assert [(w.word, w.start, w.end) for w in there.words] == [(w.word, w.start, w.end) for w in here.words]
            assert np.allclose(there.embedding, here.embedding, atol=1e-4)
    finally:
        local.close()
    assert two_processes.multilingual


def test_idle_decoders_share_what_waits(two_processes):
    """Two finals queued while both decoders wait go to both at once (two batches), not one after the other."""
    worker = two_processes
    request = _requests()[0]
    before = worker.snapshot()
    assert before.decoders == 2
    with worker._cv:  # both finals are queued before either decoder looks
        futures = [worker.submit(f"share-{i}", request, final=True) for i in range(2)]
    assert all(f.result(timeout=120).text for f in futures)
    after = worker.snapshot()
    assert after.batches - before.batches == 2 and after.decoded_finals - before.decoded_finals == 2


def test_background_work_leaves_a_decoder_to_live_calls(two_processes):
    """While live calls are on, recordings scored in the background decode on one of the two decoders at a
    time, so a live final never waits for both; once live goes quiet they may use both."""
    worker = two_processes
    request = _requests()[-1]
    with worker._cv:
        live = worker.submit("live-call", request, final=True)
        background = [worker.submit(f"job-{i}", request, final=True, background=True) for i in range(6)]
    most = 0
    while not all(f.done() for f in background):
        most = max(most, worker.snapshot().background_running)
        time.sleep(0.01)
    assert live.result(timeout=60).text and all(f.result().text for f in background)
    assert most == 1


def test_a_killed_worker_process_loses_no_final(two_processes):
    worker = two_processes
    victim = worker.decoders[0]
    os.kill(victim.pid, signal.SIGKILL)
    requests = _requests()
    futures = [worker.submit(f"crash-{i}", r, final=True) for i, r in enumerate(requests * 2)]
    results = [f.result(timeout=180) for f in futures]
    assert all(r.text for r in results)
    assert victim.restarts == 1 and victim.pid is not None


def test_a_model_that_cannot_load_fails_clearly(tmp_path):
    spec = EngineSpec(tmp_path, True, "int8", 1)
    with pytest.raises(RuntimeError, match="exited while loading"):
        open_decoders(spec, 2)


def test_decoder_counts_and_batches_follow_the_device():
    assert asr_workers(AsrSettings()) == max(1, os.cpu_count() or 1)
    assert asr_workers(AsrSettings(workers=3)) == 3
    assert asr_workers(AsrSettings(device="cuda")) == 1
    assert asr_max_batch(AsrSettings()) == 8 and asr_max_batch(AsrSettings(device="cuda")) == 32
    assert asr_max_batch(AsrSettings(device="cuda", max_batch=16)) == 16


def _cuda_devices() -> int:
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count()
    except Exception:
        return 0


@pytest.mark.skipif(_cuda_devices() == 0, reason="no CUDA device on this machine")
def test_cuda_decoder_transcribes_as_the_cpu_does():
    """asr.device = "cuda": float16 on the GPU, the same words as int8 on the CPU for clear speech."""
    gpu = AsrWorker(open_decoders(_spec("cuda"), 1), max_batch=asr_max_batch(AsrSettings(device="cuda")))
    cpu = AsrWorker(open_decoders(_spec(), 1))
    try:
        jfk = _requests()[-1]
        on_gpu, on_cpu = gpu.decode_sync([jfk])[0], cpu.decode_sync([jfk])[0]
        assert gpu.decoders[0].device == "cuda"
        words = lambda t: "".join(c for c in t.lower() if c.isalpha() or c == " ").split()  # noqa: E731
        assert words(on_gpu.text) == words(on_cpu.text)
        assert on_gpu.embedding is not None and on_gpu.embedding.shape == on_cpu.embedding.shape
    finally:
        gpu.close()
        cpu.close()
