"""Training-time augmentation: G.711 telephone channel, noise, gain."""

from __future__ import annotations

import numpy as np

__all__ = ["telephone", "mulaw_roundtrip", "add_noise", "random_gain", "augment"]

MU = 255.0


def mulaw_roundtrip(x: np.ndarray) -> np.ndarray:
    """8-bit G.711 mu-law encode + decode (quantisation noise included)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    q = np.round((y + 1.0) * 127.5) / 127.5 - 1.0  # 256 levels
    return (np.sign(q) * ((1.0 + MU) ** np.abs(q) - 1.0) / MU).astype(np.float32)


def telephone(audio: np.ndarray, sr: int = 16000, bandpass: bool = True, level_db: float | None = -20.0) -> np.ndarray:
    """Simulate a G.711 narrowband call leg and return audio at ``sr`` again.

    Downsample to 8 kHz, optionally apply the 300-3400 Hz channel band-pass (G.712),
    set a typical speech level (``level_db`` RMS dBFS; None keeps the level),
    mu-law round trip, upsample back to ``sr``.
    """
    import soxr

    x = np.asarray(audio, dtype=np.float32)
    y = soxr.resample(x, sr, 8000, quality="HQ") if sr != 8000 else x.copy()
    if bandpass:
        from scipy.signal import butter, sosfilt

        sos = butter(4, [300.0, 3400.0], btype="bandpass", fs=8000, output="sos")
        y = sosfilt(sos, y).astype(np.float32)
    if level_db is not None:
        rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)) + 1e-9)
        y = y * (10 ** (level_db / 20.0) / rms)
    y = mulaw_roundtrip(y)
    if sr == 8000:
        return y.astype(np.float32)
    z = soxr.resample(y, 8000, sr, quality="HQ")
    n = len(x)
    z = z[:n] if len(z) >= n else np.pad(z, (0, n - len(z)))
    return np.clip(z, -1.0, 1.0).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add pink-ish noise at the given SNR (relative to the clip's RMS)."""
    x = np.asarray(audio, dtype=np.float32)
    w = rng.standard_normal(len(x)).astype(np.float32)
    # simple pinking: one-pole low-pass mix
    from scipy.signal import lfilter

    pink = lfilter([1.0], [1.0, -0.95], w).astype(np.float32)
    n = 0.5 * w / (np.std(w) + 1e-9) + pink / (np.std(pink) + 1e-9)
    sig = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9)
    n = n / (np.std(n) + 1e-9) * sig * 10 ** (-snr_db / 20.0)
    return (x + n).astype(np.float32)


def random_gain(audio: np.ndarray, rng: np.random.Generator, lo_db: float = -12, hi_db: float = 6) -> np.ndarray:
    g = 10 ** (rng.uniform(lo_db, hi_db) / 20.0)
    return np.clip(np.asarray(audio, dtype=np.float32) * g, -1.0, 1.0)


def augment(audio: np.ndarray, sr: int, rng: np.random.Generator, tel: bool = True) -> np.ndarray:
    """One random training variant: gain, optional noise (SNR 10-30 dB), telephone channel."""
    y = random_gain(audio, rng)
    if rng.random() < 0.7:
        y = add_noise(y, float(rng.uniform(10, 30)), rng)
    if tel:
        y = telephone(y, sr, bandpass=bool(rng.random() < 0.7), level_db=float(rng.uniform(-30, -15)))
    return y
