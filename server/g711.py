"""G.711 encoders (16-bit linear -> µ-law / A-law), the inverse of calltone.speech.audio's tables.

Used by clients (``calltone replay``, the demo, the benchmark, tests) to send telephony audio.
"""

from __future__ import annotations

import numpy as np

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float [-1, 1] (or int16) samples to int16."""
    x = np.asarray(x)
    if x.dtype == np.int16:
        return x
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def ulaw_encode(x: np.ndarray) -> bytes:
    pcm = to_int16(x).astype(np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(_SEG_UEND, pcm, side="left")
    uval = (seg << 4) | ((pcm >> (seg + 1)) & 0x0F)
    out = np.where(seg >= 8, 0x7F, uval) ^ mask
    return out.astype(np.uint8).tobytes()


def alaw_encode(x: np.ndarray) -> bytes:
    pcm = to_int16(x).astype(np.int32) >> 3
    neg = pcm < 0
    mask = np.where(neg, 0x55, 0xD5)
    pcm = np.where(neg, -pcm - 1, pcm)
    seg = np.searchsorted(_SEG_AEND, pcm, side="left")
    aval = (seg << 4) | np.where(seg < 2, (pcm >> 1) & 0x0F, (pcm >> np.maximum(seg, 1)) & 0x0F)
    out = np.where(seg >= 8, 0x7F, aval) ^ mask
    return out.astype(np.uint8).tobytes()


def encode(x: np.ndarray, encoding: str) -> bytes:
    """Interleaved ``(frames, channels)`` or mono float samples to bytes in ``encoding``."""
    flat = np.ascontiguousarray(x).reshape(-1)
    if encoding == "mulaw":
        return ulaw_encode(flat)
    if encoding == "alaw":
        return alaw_encode(flat)
    if encoding == "pcm_s16le":
        return to_int16(flat).astype("<i2").tobytes()
    if encoding == "f32le":
        return np.clip(flat.astype(np.float32), -1, 1).astype("<f4").tobytes()
    raise ValueError(f"unknown encoding {encoding!r}")
