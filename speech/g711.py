"""ITU-T G.711 µ-law and A-law: the decoder tables and the encoders, in one place.

Decoding is a table look-up (:data:`ULAW_TO_INT16`, :data:`ALAW_TO_INT16`, or the
float tables in :data:`G711_FLOAT`); :func:`ulaw_encode` / :func:`alaw_encode` are
their inverses for clients that send telephony audio (``calltone replay``, the demo,
benchmarks and tests).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALAW_TO_INT16", "G711_FLOAT", "ULAW_SILENCE", "ULAW_TO_INT16", "alaw_encode", "to_int16", "ulaw_encode"]

ULAW_SILENCE = b"\xff"
"""The µ-law code for 0."""


def _ulaw_table() -> np.ndarray:
    """µ-law expansion of all 256 codes to 16-bit linear."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    """A-law expansion of all 256 codes to 16-bit linear."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TO_INT16: np.ndarray = _ulaw_table()
ALAW_TO_INT16: np.ndarray = _alaw_table()
G711_FLOAT: dict[str, np.ndarray] = {
    "mulaw": ULAW_TO_INT16.astype(np.float32) / 32768.0,
    "alaw": ALAW_TO_INT16.astype(np.float32) / 32768.0,
}
"""Code -> float sample in [-1, 1), per encoding."""
for _table in (ULAW_TO_INT16, ALAW_TO_INT16, *G711_FLOAT.values()):
    _table.flags.writeable = False

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float [-1, 1] (or int16) samples to int16."""
    x = np.asarray(x)
    if x.dtype == np.int16:
        return x
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def ulaw_encode(x: np.ndarray) -> bytes:
    """Samples (float in [-1, 1] or int16) to µ-law bytes."""
    pcm = to_int16(x).astype(np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(_SEG_UEND, pcm, side="left")
    uval = (seg << 4) | ((pcm >> (seg + 1)) & 0x0F)
    out = np.where(seg >= 8, 0x7F, uval) ^ mask
    return out.astype(np.uint8).tobytes()


def alaw_encode(x: np.ndarray) -> bytes:
    """Samples (float in [-1, 1] or int16) to A-law bytes."""
    pcm = to_int16(x).astype(np.int32) >> 3
    neg = pcm < 0
    mask = np.where(neg, 0x55, 0xD5)
    pcm = np.where(neg, -pcm - 1, pcm)
    seg = np.searchsorted(_SEG_AEND, pcm, side="left")
    aval = (seg << 4) | np.where(seg < 2, (pcm >> 1) & 0x0F, (pcm >> np.maximum(seg, 1)) & 0x0F)
    out = np.where(seg >= 8, 0x7F, aval) ^ mask
    return out.astype(np.uint8).tobytes()
