"""Speaker-grouped folds and the figures of a cross-validation: UAR, confusion, per corpus and language."""

from __future__ import annotations

import numpy as np

from .dataset import GRADES


def speaker_folds(speakers: np.ndarray, corpus: np.ndarray, n_folds: int = 5) -> list[np.ndarray]:
    """Speaker-grouped folds: each corpus's speakers spread over ``n_folds`` folds
    (GroupKFold-style; CASIA's 2 speakers go to different folds = leave-one-speaker-out)."""
    fold_of: dict[str, int] = {}
    for c in sorted(set(corpus)):
        spk = sorted(set(speakers[corpus == c]))
        for j, s in enumerate(spk):
            fold_of[s] = j % n_folds
    f = np.array([fold_of[s] for s in speakers])
    return [np.flatnonzero(f == k) for k in range(n_folds)]


def uar(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int = 3) -> float:
    rec = [np.mean(y_pred[y_true == k] == k) for k in range(n_labels) if np.any(y_true == k)]
    return float(np.mean(rec)) if rec else float("nan")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = 3) -> list[list[int]]:
    m = np.zeros((n, n), dtype=int)
    for t, p in zip(y_true, y_pred):
        m[t, p] += 1
    return m.tolist()


def fold_probs(P: np.ndarray, classes: list[str]) -> np.ndarray:
    """Model-class probabilities -> (n, 3) grades; happy/other count as calm."""
    M = np.zeros((len(classes), 3))
    for i, c in enumerate(classes):
        M[i, GRADES.index(c if c in GRADES else "calm")] = 1
    return P @ M


def report(P3: np.ndarray, emotion: np.ndarray, grade_idx: np.ndarray, corpus: np.ndarray, lang: np.ndarray) -> dict:
    pred = P3.argmax(1)
    g = grade_idx >= 0
    res = {
        "uar": uar(grade_idx[g], pred[g]),
        "per_corpus": {c: uar(grade_idx[g & (corpus == c)], pred[g & (corpus == c)]) for c in sorted(set(corpus[g]))},
        "per_language": {c: uar(grade_idx[g & (lang == c)], pred[g & (lang == c)]) for c in sorted(set(lang[g]))},
        "confusion": confusion(grade_idx[g], pred[g]),
        "labels": list(GRADES),
        "n": int(g.sum()),
    }
    hs = np.isin(emotion, ["happiness", "surprise"])
    res["happy_as_angry"] = float(np.mean(pred[hs] == 2)) if hs.any() else None
    res["n_happy_surprise"] = int(hs.sum())
    return res
