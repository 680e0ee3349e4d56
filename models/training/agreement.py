"""Do the speakers of a corpus express an emotion the same way?

A speaker-independent model can only learn what speakers share.  For one pair of emotions
(e.g. fear vs neutral) each speaker's *shift* is the mean difference of their clips'
features, standardised within that speaker (so voice and level drop out).  A speaker's
**agreement** is the correlation of their shift with the mean shift of all other speakers:
near 1 when they act the emotion like everybody else, near 0 (or below) when their
acting has nothing in common with the rest.

``bench/emotion.py`` prints it per corpus; the model card uses it to explain why the
Mandarin (CASIA) anxious grade cannot reach the accuracy of the other languages.
"""

from __future__ import annotations

import numpy as np

PAIRS: tuple[tuple[str, str], ...] = (("fear", "neutral"), ("anger", "neutral"), ("fear", "anger"))


def speaker_shifts(X: np.ndarray, speakers: np.ndarray, emotions: np.ndarray, a: str, b: str) -> dict[str, np.ndarray]:
    """Per speaker: mean(a) - mean(b) of the speaker-standardised features (speakers with both)."""
    out: dict[str, np.ndarray] = {}
    for s in np.unique(speakers):
        idx = speakers == s
        ia, ib = idx & (emotions == a), idx & (emotions == b)
        if not ia.any() or not ib.any():
            continue
        Z = (X - X[idx].mean(0)) / (X[idx].std(0) + 1e-6)
        out[str(s)] = Z[ia].mean(0) - Z[ib].mean(0)
    return out


def agreement(X: np.ndarray, speakers: np.ndarray, emotions: np.ndarray, a: str, b: str) -> dict[str, float]:
    """Per speaker: correlation of their (a - b) shift with the mean shift of all other speakers."""
    shifts = speaker_shifts(np.asarray(X, dtype=np.float64), np.asarray(speakers), np.asarray(emotions), a, b)
    res: dict[str, float] = {}
    for s, v in shifts.items():
        rest = [w for t, w in shifts.items() if t != s]
        if rest:
            res[s] = float(np.corrcoef(v, np.mean(rest, axis=0))[0, 1])
    return res


def by_group(per_speaker: dict[str, float], group_of: dict[str, str]) -> dict[str, float]:
    """Mean agreement per group (e.g. corpus) of speakers."""
    groups: dict[str, list[float]] = {}
    for s, r in per_speaker.items():
        groups.setdefault(group_of[s], []).append(r)
    return {g: float(np.mean(v)) for g, v in sorted(groups.items())}
