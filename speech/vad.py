"""Streaming voice activity detection with the Silero model that ships in faster-whisper.

``SileroVad`` holds the ONNX session (load once per process, share between channels);
``StreamingVad`` is per channel: feed it 16 kHz samples in any chunk size and it
returns speech segments as they end, with call-relative times.  Feeding a whole
file at once gives the same segments as feeding it 20 ms at a time, so live calls
and recordings are cut identically.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calltone.settings import VadSettings
from calltone.speech.audio import SAMPLE_RATE

CHUNK = 512  # Silero v5/v6 window at 16 kHz (32 ms)
CONTEXT = 64


@dataclass(frozen=True)
class SpeechSegment:
    """Speech from ``start`` to ``end`` (call-relative seconds)."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Pause:
    """Silence between two speech segments of the same speaker."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


class SileroVad:
    """The Silero VAD ONNX model (thread-safe: state lives in the caller)."""

    def __init__(self, model_path: Path | None = None) -> None:
        import onnxruntime

        if model_path is None:
            from faster_whisper.utils import get_assets_path

            model_path = Path(get_assets_path()) / "silero_vad_v6.onnx"
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"], sess_options=opts)

    def probabilities(self, chunks: np.ndarray, context: np.ndarray, h: np.ndarray, c: np.ndarray):
        """Speech probability of each 512-sample chunk; returns (probs, last context, h, c)."""
        prev = np.concatenate([context[None, :], chunks[:-1, -CONTEXT:]], axis=0)
        batch = np.concatenate([prev, chunks], axis=1).astype(np.float32)
        out, h, c = self.session.run(None, {"input": batch, "h": h, "c": c})
        return out.reshape(-1), chunks[-1, -CONTEXT:].copy(), h, c


_shared: SileroVad | None = None
_shared_lock = threading.Lock()


def shared_vad_model() -> SileroVad:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SileroVad()
        return _shared


class StreamingVad:
    """Per-channel endpointing: speech starts above ``threshold`` and ends after
    ``min_silence_ms`` below ``threshold - 0.15``; segments are padded by
    ``speech_pad_ms`` and cut at their quietest chunk when longer than
    ``max_utterance_s``."""

    def __init__(self, settings: VadSettings = VadSettings(), model: SileroVad | None = None, t0: float = 0.0) -> None:
        self.s = settings
        self.model = model or shared_vad_model()
        self.t0 = t0
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._n_chunks = 0  # chunks processed
        self._start: int | None = None  # chunk index where the current speech started
        self._silence_from: int | None = None
        self._probs: list[float] = []  # probabilities since the current speech started
        self._last_end = 0.0

    # chunk index -> seconds
    def _t(self, chunk_index: int) -> float:
        return self.t0 + chunk_index * CHUNK / SAMPLE_RATE

    def would_run_model(self, n_samples: int) -> bool:
        """Whether feeding ``n_samples`` more completes a 32 ms chunk (else feeding is a cheap append)."""
        return len(self._pending) + n_samples >= CHUNK

    @property
    def processed_s(self) -> float:
        return self._t(self._n_chunks)

    @property
    def in_speech(self) -> bool:
        return self._start is not None and (self._n_chunks - self._start) * CHUNK * 1000 / SAMPLE_RATE >= self.s.min_speech_ms

    @property
    def speech_start(self) -> float | None:
        """Start (padded) of the speech going on now, if any."""
        if not self.in_speech:
            return None
        return max(self._last_end, self._t(self._start) - self.s.speech_pad_ms / 1000)

    def feed(self, samples: np.ndarray) -> list[SpeechSegment]:
        """Add 16 kHz samples; return the speech segments that ended."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        n = len(data) // CHUNK
        self._pending = data[n * CHUNK :]
        if n == 0:
            return []
        probs, self._context, self._h, self._c = self.model.probabilities(data[: n * CHUNK].reshape(n, CHUNK), self._context, self._h, self._c)
        ended: list[SpeechSegment] = []
        for p in probs:
            seg = self._step(float(p))
            if seg is not None:
                ended.append(seg)
        return ended

    def flush(self) -> list[SpeechSegment]:
        """End of audio: close the segment in progress."""
        if self._start is None:
            return []
        end_chunk = self._silence_from if self._silence_from is not None else self._n_chunks
        seg = self._close(end_chunk)
        return [seg] if seg is not None else []

    def _step(self, p: float) -> SpeechSegment | None:
        i = self._n_chunks
        self._n_chunks += 1
        thr, neg = self.s.threshold, self.s.threshold - 0.15
        chunk_ms = CHUNK * 1000 / SAMPLE_RATE
        if self._start is None:
            if p >= thr:
                self._start, self._silence_from, self._probs = i, None, [p]
            return None
        self._probs.append(p)
        if p >= thr:
            self._silence_from = None
        elif p < neg:
            if self._silence_from is None:
                self._silence_from = i
            silent_ms = (self._n_chunks - self._silence_from) * chunk_ms
            if not self.in_speech and silent_ms >= chunk_ms * 2:
                self._start = None  # a blip shorter than min_speech_ms
                return None
            if silent_ms >= self.s.min_silence_ms:
                return self._close(self._silence_from)
        if (self._n_chunks - self._start) * CHUNK / SAMPLE_RATE >= self.s.max_utterance_s:
            return self._cut()
        return None

    def _close(self, end_chunk: int) -> SpeechSegment | None:
        start, self._start, self._silence_from, self._probs = self._start, None, None, []
        if (end_chunk - start) * CHUNK * 1000 / SAMPLE_RATE < self.s.min_speech_ms:
            return None
        pad = self.s.speech_pad_ms / 1000
        seg = SpeechSegment(round(max(self._last_end, self._t(start) - pad), 3), round(min(self.processed_s, self._t(end_chunk) + pad), 3))
        self._last_end = seg.end
        return seg

    def _cut(self) -> SpeechSegment:
        """Too long: split at the least speech-like chunk of the second half."""
        half = len(self._probs) // 2
        cut = self._start + half + int(np.argmin(self._probs[half:]))
        start = self._start
        seg = SpeechSegment(round(max(self._last_end, self._t(start) - self.s.speech_pad_ms / 1000), 3), round(self._t(cut), 3))
        self._last_end = seg.end
        self._probs = self._probs[cut - start :]
        self._start, self._silence_from = cut, None
        return seg


def pauses_between(segments: list[SpeechSegment]) -> list[Pause]:
    """The pauses between consecutive speech segments of one speaker."""
    return [Pause(a.end, b.start) for a, b in zip(segments, segments[1:]) if b.start > a.end]
