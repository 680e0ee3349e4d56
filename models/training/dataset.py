"""Manifest loading and cached feature extraction for training / evaluation."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calltone.emotion.features import FEATURE_NAMES, FEATURE_VERSION, extract_features
from calltone.events import GRADES as GRADE_ORDER

from .augment import augment, telephone

GRADES = list(GRADE_ORDER)  # calltone's grade order, as a list (index = class id)
# training classes: the 3 grades plus "happy" (happiness, surprise) and "other"
# (sadness, disgust, boredom); happy/other map to calm at inference.
CLASSES = ["calm", "anxious", "angry", "happy", "other"]
EMO_TO_CLASS = {
    "neutral": "calm",
    "calm": "calm",
    "fear": "anxious",
    "anger": "angry",
    "happiness": "happy",
    "surprise": "happy",
    "sadness": "other",
    "disgust": "other",
    "boredom": "other",
}


@dataclass
class Manifest:
    root: Path
    rows: list[dict]

    @property
    def paths(self) -> list[Path]:
        return [self.root / r["path"] for r in self.rows]

    def col(self, name: str) -> np.ndarray:
        return np.array([r[name] for r in self.rows])


def load_manifest(manifest: Path | str) -> Manifest:
    manifest = Path(manifest)
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return Manifest(manifest.parent, rows)


def cache_dir() -> Path:
    d = Path(os.environ.get("CALLTONE_FEATURE_CACHE", "/tmp/calltone-feature-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _key(m: Manifest, variant: str) -> str:
    h = hashlib.sha1()
    h.update(str(m.root.resolve()).encode())
    for r in m.rows:
        h.update(r["path"].encode())
    h.update(variant.encode())
    h.update(",".join(FEATURE_NAMES).encode())
    if not variant.endswith("w"):  # prosody caches depend on the feature code version
        h.update(FEATURE_VERSION.encode())
    return h.hexdigest()[:16]


def load_audio(path: Path, sr: int = 16000) -> np.ndarray:
    import soundfile as sf

    a, s = sf.read(str(path), dtype="float32", always_2d=False)
    if a.ndim > 1:
        a = a.mean(axis=1)
    if s != sr:
        import soxr

        a = soxr.resample(a, s, sr).astype(np.float32)
    return a


def variant_audio(audio: np.ndarray, variant: str, seed: int, sr: int = 16000) -> np.ndarray:
    """clean | tel (deterministic G.711 channel) | aug_tel / aug_clean (random, seeded)."""
    if variant == "clean":
        return audio
    if variant == "tel":
        return telephone(audio, sr)
    rng = np.random.default_rng(seed)
    if variant == "aug_tel":
        return augment(audio, sr, rng, tel=True)
    if variant == "aug_clean":
        return augment(audio, sr, rng, tel=False)
    raise ValueError(variant)


def features_for(m: Manifest, variant: str = "clean", use_cache: bool = True, progress: bool = False) -> np.ndarray:
    """(n, len(FEATURE_NAMES)) float32 prosody features, cached under /tmp."""
    f = cache_dir() / f"prosody_{variant}_{_key(m, variant)}.npy"
    if use_cache and f.exists():
        return np.load(f)
    out = np.zeros((len(m.rows), len(FEATURE_NAMES)), dtype=np.float32)
    for i, p in enumerate(m.paths):
        a = load_audio(p)
        seed = int(hashlib.sha1((m.rows[i]["path"] + variant).encode()).hexdigest()[:8], 16)
        out[i] = extract_features(variant_audio(a, variant, seed), 16000)
        if progress and i % 200 == 0:
            print(f"  {variant}: {i}/{len(m.rows)}", flush=True)
    if use_cache:
        np.save(f, out)
    return out


def embeddings_for(m: Manifest, variant: str = "clean", use_cache: bool = True, progress: bool = False) -> np.ndarray:
    """(n, 1024) Whisper-encoder embeddings (mean ‖ std), cached under /tmp."""
    f = cache_dir() / f"whisper_{variant}_{_key(m, variant + 'w')}.npy"
    if use_cache and f.exists():
        return np.load(f)
    from .embedding import WhisperEmbedder

    w = WhisperEmbedder(cpu_threads=1)
    out = np.zeros((len(m.rows), w.dim), dtype=np.float32)
    for i, p in enumerate(m.paths):
        a = load_audio(p)
        seed = int(hashlib.sha1((m.rows[i]["path"] + variant).encode()).hexdigest()[:8], 16)
        out[i] = w.embed(variant_audio(a, variant, seed))
        if progress and i % 200 == 0:
            print(f"  whisper {variant}: {i}/{len(m.rows)}", flush=True)
    if use_cache:
        np.save(f, out)
    return out
