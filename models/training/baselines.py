"""Speaker baselines in training: the population statistics and the speaker-relative features a clip gets.

At runtime (``calltone.emotion.features.SpeakerBaseline``) a caller's baseline grows utterance by
utterance; training draws each clip's baseline from a random number of the same speaker's clips so the
model learns to read a voice against a baseline of any size (``speaker_z``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calltone.emotion.features import SpeakerBaseline

BASELINE_SIZES = [1, 3, 8, 20, 10_000]  # utterances in the speaker baseline (training simulation)
PRIOR_N = 3.0  # SpeakerBaseline shrinkage (utterances' worth of population prior); 8 lost 0.03 UAR on held-out calls
CALL_BASELINE_SIZES = [0, 1, 3, 6, 12, 24]  # utterances heard before this one (Config.baseline = "calls")
CALM_FIRST = 0.5  # share of call-like baselines drawn from the speaker's calm clips only (calls start calm)


@dataclass
class PopStats:
    mean: np.ndarray
    std: np.ndarray
    within_scale: np.ndarray
    prior_n: float = PRIOR_N
    emb_mean: np.ndarray | None = None

    def baseline(self) -> SpeakerBaseline:
        return SpeakerBaseline(self.mean, self.std, prior_n=self.prior_n, within_scale=self.within_scale,
                               emb_pop_mean=self.emb_mean)


def pop_stats(X: np.ndarray, speakers: np.ndarray, prior_n: float = PRIOR_N, E: np.ndarray | None = None) -> PopStats:
    mean = X.mean(0)
    std = np.maximum(X.std(0), 1e-6)
    ws = []
    for s in np.unique(speakers):
        ws.append(X[speakers == s].std(0) / std)
    within = np.clip(np.median(np.stack(ws), axis=0), 0.2, 1.0)
    return PopStats(mean, std, within, prior_n, None if E is None else E.mean(0))


def speaker_z(
    X: np.ndarray,
    speakers: np.ndarray,
    ps: PopStats,
    rng: np.random.Generator | None = None,
    sizes: list[int] | None = None,
    E: np.ndarray | None = None,
    calm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Speaker-relative features (and centred embeddings when ``E`` is given).

    Without rng: baseline from all the speaker's clips (unlabelled, as eval). With rng: each
    clip gets a baseline from itself plus a random number of the speaker's other clips
    (simulates the start of a call, when the baseline is mostly the population prior).
    With ``calm`` (a mask of the calm clips) the baseline is what a call's would be when this clip
    is heard: a random number of the speaker's *other* clips, half the time calm ones only."""
    if rng is not None and calm is not None:
        return _call_baselines(X, speakers, ps, rng, E, calm, sizes or CALL_BASELINE_SIZES)
    Z = np.zeros_like(X, dtype=np.float32)
    EZ = None if E is None else np.zeros_like(E, dtype=np.float32)
    for s in np.unique(speakers):
        idx = np.flatnonzero(speakers == s)
        if rng is None:
            b = ps.baseline()
            b.update(X[idx], embedding=None if E is None else E[idx])
            Z[idx] = b.normalise(X[idx])
            if E is not None:
                EZ[idx] = b.center_embedding(E[idx])
            continue
        for i in idx:
            k = int(rng.choice(sizes or BASELINE_SIZES))
            others = idx[idx != i]
            pick = others if k - 1 >= len(others) else rng.choice(others, size=max(k - 1, 0), replace=False)
            sel = np.concatenate([[i], pick]).astype(int)
            b = ps.baseline()
            b.update(X[sel], embedding=None if E is None else E[sel])
            Z[i] = b.normalise(X[i])
            if E is not None:
                EZ[i] = b.center_embedding(E[i])
    return Z, EZ


def _call_baselines(X, speakers, ps: PopStats, rng: np.random.Generator, E, calm: np.ndarray, sizes: list[int]):
    Z = np.zeros_like(X, dtype=np.float32)
    EZ = None if E is None else np.zeros_like(E, dtype=np.float32)
    for i in range(len(X)):
        others = np.flatnonzero((speakers == speakers[i]) & (np.arange(len(X)) != i))
        if rng.random() < CALM_FIRST and np.any(calm[others]):
            others = others[calm[others]]
        k = min(int(rng.choice(sizes)), len(others))
        sel = rng.choice(others, size=k, replace=False) if k else np.zeros(0, dtype=int)
        b = ps.baseline()
        if k:
            b.update(X[sel], embedding=None if E is None else E[sel])
        Z[i] = b.normalise(X[i])
        if E is not None:
            EZ[i] = b.center_embedding(E[i])
    return Z, EZ
