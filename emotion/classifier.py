"""Runtime emotion classifier: numpy + onnxruntime only (no sklearn / torch).

Model files (``models/``):
  ``emotion.onnx`` + ``emotion.json``                 main model (see sidecar ``input_layout``)
  ``emotion_prosody.onnx`` + ``emotion_prosody.json`` prosody-only model (the voice alone)

Input to every model is ``[prosody_raw ‖ prosody_speaker_z (‖ whisper_embedding)]``:
  * ``prosody_raw``: ``extract_features`` output (population scaling happens inside the ONNX graph),
  * ``prosody_speaker_z``: the same features relative to this speaker's ``SpeakerBaseline``
    (shrunk toward the population while the speaker has said little),
  * optional Whisper-encoder embedding (mean ‖ std pooled), when the sidecar lists it.

Model classes may include ``happy`` / ``other`` (trained so that excited or happy callers are
not graded angry); they are folded into ``calm`` so ``predict_proba`` always returns
``(n, 3)`` in the order calm, anxious, angry.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from calltone.events import GRADES

from .features import FEATURE_INFO, FEATURE_NAMES, SpeakerBaseline, feature_label

LABELS: list[str] = list(GRADES)
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = MODELS_DIR / "emotion.onnx"
PROSODY_MODEL = MODELS_DIR / "emotion_prosody.onnx"

# Features people can understand; explain() picks cues from these first.
EXPLAINABLE = [
    "f0_mean", "f0_range", "f0_std", "loud_mean", "loud_range", "loud_std", "syll_rate", "artic_rate",
    "pause_ratio", "pause_max", "jitter", "shimmer", "hnr_mean", "alpha_ratio", "hammarberg",
    "spec_slope", "centroid", "f0_rise", "f0_fall", "loud_peak_rate",
]

# Which way each explainable feature typically moves when a speaker is aroused (anxious or
# angry) — the eGeMAPS arousal correlates: higher, wider, louder, faster, fewer pauses,
# tenser spectrum (in this feature set higher alpha ratio / Hammarberg / slope = softer).
# Used to explain an upset grade by the cues that point that way.  0 = no clear direction.
AROUSED_DIRECTION = {
    "f0_mean": 1, "f0_range": 1, "f0_std": 1, "f0_rise": 1, "f0_fall": 1,
    "loud_mean": 1, "loud_range": 1, "loud_std": 1, "loud_peak_rate": 1,
    "syll_rate": 1, "artic_rate": 1, "pause_ratio": -1, "pause_max": -1,
    "alpha_ratio": -1, "hammarberg": -1, "spec_slope": -1, "centroid": 1,
    "jitter": 0, "shimmer": 0, "hnr_mean": 0,
}

__all__ = ["LABELS", "EmotionClassifier", "load", "predict_proba", "explain", "DEFAULT_MODEL", "PROSODY_MODEL"]


class EmotionClassifier:
    """Loads one ONNX model + JSON sidecar; thread-safe, batched inference."""

    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path) if model_path else DEFAULT_MODEL
        if not self.model_path.exists() and model_path is None and PROSODY_MODEL.exists():
            self.model_path = PROSODY_MODEL
        self.meta = json.loads(self.model_path.with_suffix(".json").read_text(encoding="utf-8"))
        if list(self.meta["feature_names"]) != FEATURE_NAMES:
            raise ValueError(f"{self.model_path}: feature names differ from calltone.emotion.features")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        outs = [o.name for o in self.session.get_outputs()]
        self.prob_output = self.meta.get("prob_output", outs[0])
        gate = self.meta.get("gate") or None
        self.gate_output = gate["output"] if gate else None
        self.gate_power = float(gate["power"]) if gate else 0.0
        self.classes: list[str] = list(self.meta["classes"])
        self.labels: list[str] = list(self.meta.get("labels", LABELS))
        fold = self.meta.get("class_to_grade", {c: c for c in self.labels})
        self._fold = np.zeros((len(self.classes), len(self.labels)), dtype=np.float32)
        for i, c in enumerate(self.classes):
            self._fold[i, self.labels.index(fold[c])] = 1.0
        self.pop_mean = np.asarray(self.meta["pop_mean"], dtype=np.float64)
        self.pop_std = np.asarray(self.meta["pop_std"], dtype=np.float64)
        self.within_scale = np.asarray(self.meta.get("within_scale", 1.0), dtype=np.float64)
        self.prior_n = float(self.meta.get("prior_n", 8.0))
        layout = {b["name"]: b for b in self.meta["input_layout"]}
        self.embedding_dim = int(layout["whisper_embedding"]["size"]) if "whisper_embedding" in layout else 0
        self.emb_speaker_norm = bool(layout.get("whisper_embedding", {}).get("speaker_norm", False))
        emb_pop = self.meta.get("emb_pop_mean")
        self.emb_pop_mean = np.asarray(emb_pop, dtype=np.float64) if emb_pop is not None else None
        self.n_inputs = sum(int(b["size"]) for b in self.meta["input_layout"])
        self._lock = threading.Lock()

    # -- baseline -------------------------------------------------------------
    @property
    def uses_embedding(self) -> bool:
        return self.embedding_dim > 0

    def new_baseline(self) -> SpeakerBaseline:
        """Empty per-speaker baseline with this model's population statistics."""
        return SpeakerBaseline(self.pop_mean, self.pop_std, prior_n=self.prior_n, within_scale=self.within_scale,
                               emb_pop_mean=self.emb_pop_mean if self.emb_speaker_norm else None)

    def build_input(
        self,
        features: np.ndarray,
        baseline: SpeakerBaseline | Sequence[SpeakerBaseline | None] | None = None,
        embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        f = np.atleast_2d(np.asarray(features, dtype=np.float32))
        bl = list(baseline) if isinstance(baseline, (list, tuple)) else [baseline] * len(f)
        bl = [b or self.new_baseline() for b in bl]
        z = np.stack([b.normalise(row) for b, row in zip(bl, f)])
        parts = [f, np.atleast_2d(z).astype(np.float32)]
        if self.uses_embedding:
            if embeddings is None:
                raise ValueError("this model needs the Whisper embedding; use the prosody-only model")
            e = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
            if e.shape[1] != self.embedding_dim:
                raise ValueError(f"embedding has {e.shape[1]} values, model expects {self.embedding_dim}")
            if self.emb_speaker_norm:
                e = np.stack([b.center_embedding(row) for b, row in zip(bl, e)])
            parts.append(e)
        x = np.concatenate(parts, axis=1).astype(np.float32)
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    # -- inference ------------------------------------------------------------
    def run_model(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw outputs for a prepared input batch: model-class probabilities (n, len(classes))
        and, when the model has one, the angry-vs-happy gate's P(angry) (n,)."""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        names = [self.prob_output] + ([self.gate_output] if self.gate_output else [])
        with self._lock:
            res = self.session.run(names, {self.input_name: x})
        p = np.asarray(res[0], dtype=np.float64)
        g = np.asarray(res[1], dtype=np.float64)[:, 0] if self.gate_output else None
        return p, g

    def proba_from_input(self, x: np.ndarray) -> np.ndarray:
        p, g = self.run_model(x)
        p = p @ self._fold
        if g is not None and self.gate_power > 0:
            # an excited / happy voice looks "angry" to prosody; the gate moves that mass to calm
            moved = p[:, 2] * (1.0 - np.clip(g, 0.0, 1.0) ** self.gate_power)
            p[:, 2] -= moved
            p[:, 0] += moved
        return (p / np.maximum(p.sum(axis=1, keepdims=True), 1e-9)).astype(np.float32)

    def predict_proba(
        self,
        features_batch: np.ndarray,
        baseline: SpeakerBaseline | Sequence[SpeakerBaseline | None] | None = None,
        embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n, 3) probabilities in label order calm, anxious, angry.

        ``baseline``: one SpeakerBaseline for the whole batch, or one per row (None = empty).
        ``embeddings``: (n, D) raw Whisper embeddings, required when ``uses_embedding``; they are
        centred on the baseline's embedding mean here (feed the same rows to ``baseline.update``
        with ``embedding=`` to let it learn the speaker).
        """
        return self.proba_from_input(self.build_input(features_batch, baseline, embeddings))

    def explain(self, features: np.ndarray, baseline: SpeakerBaseline | None = None, top_k: int = 3, min_z: float = 1.0,
                toward: str | None = None) -> list[dict]:
        return explain_features(features, baseline or self.new_baseline(), self.pop_mean, self.pop_std, top_k, min_z, toward)


def explain_features(
    features: np.ndarray,
    baseline: SpeakerBaseline | None,
    pop_mean: np.ndarray | None = None,
    pop_std: np.ndarray | None = None,
    top_k: int = 3,
    min_z: float = 1.0,
    toward: str | None = None,
) -> list[dict]:
    """Top cues: features that moved most vs the speaker baseline (or the population).

    With ``toward`` = "anxious" or "angry", only features that moved the aroused way
    (``AROUSED_DIRECTION``) count, so an upset grade is explained by what points to it.

    Returns dicts shaped like ``calltone.events.Cue``: name, label, value, unit, z,
    plus ``delta`` (value minus the reference mean) and ``reference`` ("speaker"/"population").
    """
    f = np.asarray(features, dtype=np.float64).reshape(-1)
    if baseline is not None and baseline.n > 0:
        mean, sd = baseline.stats()
        ref = "speaker"
    elif baseline is not None:
        mean, sd = baseline.pop_mean, baseline.pop_std
        ref = "population"
    else:
        mean, sd = np.asarray(pop_mean, dtype=np.float64), np.asarray(pop_std, dtype=np.float64)
        ref = "population"
    z = (f - mean) / np.maximum(sd, 1e-9)
    idx = [FEATURE_NAMES.index(n) for n in EXPLAINABLE]
    if toward in ("anxious", "angry"):
        idx = [i for i in idx if AROUSED_DIRECTION.get(FEATURE_NAMES[i], 0) * z[i] > 0]
    order = sorted(idx, key=lambda i: -abs(z[i]))
    cues = []
    seen_groups: set[str] = set()
    for i in order:
        name = FEATURE_NAMES[i]
        if abs(z[i]) < min_z or len(cues) >= top_k:
            break
        grp = FEATURE_INFO[name]["group"]
        if grp in seen_groups:  # one cue per group (pitch, loudness, rate, ...)
            continue
        seen_groups.add(grp)
        cues.append(
            {
                "name": name,
                "label": feature_label(name, z[i]),
                "value": float(f[i]),
                "unit": FEATURE_INFO[name]["unit"],
                "z": round(float(z[i]), 2),
                "delta": float(f[i] - mean[i]),
                "reference": ref,
            }
        )
    return cues


_DEFAULT: dict[str, EmotionClassifier] = {}
_LOAD_LOCK = threading.Lock()


def load(model_path: str | Path | None = None) -> EmotionClassifier:
    """Cached classifier (each model file is loaded once per process)."""
    key = str(model_path or DEFAULT_MODEL)
    with _LOAD_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = EmotionClassifier(model_path)
        return _DEFAULT[key]


def predict_proba(features_batch: np.ndarray, baseline=None, embeddings: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) calm/anxious/angry. Uses the main model when embeddings are given, else the prosody-only one."""
    if embeddings is None and PROSODY_MODEL.exists():
        clf = load(PROSODY_MODEL)
    else:
        clf = load()
    return clf.predict_proba(features_batch, baseline, embeddings)


def explain(features: np.ndarray, baseline: SpeakerBaseline | None = None, top_k: int = 3) -> list[dict]:
    """Top cues vs the speaker baseline (population statistics when it is empty / None)."""
    clf = load(PROSODY_MODEL if PROSODY_MODEL.exists() else None)
    return clf.explain(features, baseline, top_k=top_k)
