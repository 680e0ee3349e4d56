"""Prosody features on real emotional speech (skipped when the corpora are absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from calltone.emotion.features import FEATURE_INFO, FEATURE_NAMES, SpeakerBaseline, extract_features

from .conftest import needs_shared

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emotion-speech"
pytestmark = needs_shared(DATA / "manifest.csv")

I = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _rows():
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _load(path: str) -> np.ndarray:
    import soundfile as sf

    a, sr = sf.read(str(DATA / path), dtype="float32")
    assert sr == 16000
    return a


def _clips(speaker: str, grade: str, n: int = 4) -> list[str]:
    return [r["path"] for r in _rows() if r["speaker"] == speaker and r["grade"] == grade][:n]


def _mean_feats(paths, tel: bool = False) -> np.ndarray:
    out = []
    for p in paths:
        a = _load(p)
        if tel:
            from calltone.models.training.augment import telephone

            a8 = telephone(a, 16000, level_db=None)[::2]  # 8 kHz telephone signal
            out.append(extract_features(a8, 8000))
        else:
            out.append(extract_features(a, 16000))
    return np.mean(out, axis=0)


def test_names_and_labels():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) >= 40
    for n in FEATURE_NAMES:
        info = FEATURE_INFO[n]
        assert info["label_up"] and info["label_down"] and "unit" in info
    assert FEATURE_INFO["f0_mean"]["label_up"] == "voice pitch raised"
    assert FEATURE_INFO["loud_mean"]["label_up"] == "louder"
    assert FEATURE_INFO["syll_rate"]["label_up"] == "faster speech"


def test_shape_dtype_and_degenerate_input():
    a = _load(_rows()[0]["path"])
    f = extract_features(a)
    assert f.dtype == np.float32 and f.shape == (len(FEATURE_NAMES),) and np.all(np.isfinite(f))
    for x in (np.zeros(16000, np.float32), np.zeros(100, np.float32), 1e-4 * np.random.default_rng(0).standard_normal(8000)):
        g = extract_features(x.astype(np.float32))
        assert g.shape == f.shape and np.all(np.isfinite(g))


@pytest.mark.parametrize("speaker", ["ravdess-01", "ravdess-02", "casia-liuchanhg", "casia-wangzhe", "emodb-03", "emodb-11"])
def test_angry_higher_pitch_than_calm(speaker):
    ang, calm = _mean_feats(_clips(speaker, "angry")), _mean_feats(_clips(speaker, "calm"))
    assert ang[I["f0_mean"]] > calm[I["f0_mean"]] + 1.0  # semitones


@pytest.mark.parametrize("speaker", ["ravdess-01", "ravdess-02", "casia-liuchanhg", "casia-wangzhe"])
def test_angry_louder_than_calm(speaker):
    # (EmoDB was peak-normalised per file, so its absolute loudness is not comparable)
    ang, calm = _mean_feats(_clips(speaker, "angry")), _mean_feats(_clips(speaker, "calm"))
    assert ang[I["loud_mean"]] > calm[I["loud_mean"]] + 2.0  # dB


def test_valid_on_8khz_telephone_audio():
    from calltone.models.training.augment import mulaw_roundtrip, telephone

    p = _clips("ravdess-01", "angry", 1)[0]
    a = _load(p)
    t = telephone(a, 16000)
    assert t.shape == a.shape and np.max(np.abs(t)) <= 1.0
    q = mulaw_roundtrip(np.linspace(-1, 1, 1001))
    assert np.max(np.abs(q - np.linspace(-1, 1, 1001))) < 0.04
    tel8 = extract_features(telephone(a, 16000, level_db=None)[::2], 8000)
    assert np.all(np.isfinite(tel8)) and tel8.shape == (len(FEATURE_NAMES),)
    # pitch and rate survive the channel (median over clips of several speakers)
    dpitch, drate = [], []
    for spk in ("ravdess-01", "ravdess-02", "emodb-03", "emodb-11", "casia-liuchanhg", "casia-wangzhe"):
        x = _load(_clips(spk, "calm", 1)[0])
        c = extract_features(x)
        t8 = extract_features(telephone(x, 16000, level_db=None)[::2], 8000)
        dpitch.append(abs(t8[I["f0_mean"]] - c[I["f0_mean"]]))
        drate.append(abs(t8[I["syll_rate"]] - c[I["syll_rate"]]))
    assert np.median(dpitch) < 1.0  # semitones
    assert np.median(drate) < 1.0  # syllables/s
    # and the angry > calm pitch difference survives too
    ang = _mean_feats(_clips("casia-wangzhe", "angry", 3), tel=True)
    calm = _mean_feats(_clips("casia-wangzhe", "calm", 3), tel=True)
    assert ang[I["f0_mean"]] > calm[I["f0_mean"]] + 1.0
    assert ang[I["loud_mean"]] > calm[I["loud_mean"]]


def test_speaker_baseline_shrinks_toward_population():
    F = len(FEATURE_NAMES)
    pm, ps = np.zeros(F), np.ones(F)
    b = SpeakerBaseline(pm, ps, prior_n=8, within_scale=1.0)
    x = np.full(F, 3.0, np.float32)
    # empty baseline: plain population z-score -> an upset first utterance is not hidden
    assert np.allclose(b.normalise(x), 3.0)
    b.update(x)
    z1 = b.normalise(x)
    assert np.all(z1 > 2.0)  # one utterance barely moves the baseline
    rng = np.random.default_rng(0)
    for _ in range(200):
        b.update(rng.normal(0, 0.5, F))
    mean, sd = b.stats()
    assert np.all(np.abs(mean) < 0.3)  # 200 utterances: mostly the speaker's own mean
    assert np.allclose(sd, 0.5, atol=0.15)
