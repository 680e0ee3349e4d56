"""Runtime classifier (onnxruntime) vs training-time sklearn model, eval JSON format."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from calltone.emotion.classifier import LABELS, PROSODY_MODEL, DEFAULT_MODEL, EmotionClassifier
from calltone.emotion.features import FEATURE_NAMES, extract_features

from .conftest import needs_shared

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emotion-speech"
needs_data = needs_shared(DATA / "manifest.csv")


def _subset(n_per: int = 3) -> list[dict]:
    """A few clips of every grade (+ happiness) from two speakers per corpus."""
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keep, count = [], {}
    spk = {"ravdess-01", "ravdess-02", "emodb-03", "emodb-08", "casia-liuchanhg", "casia-wangzhe"}
    for r in rows:
        if r["speaker"] not in spk or r["emotion"] not in ("neutral", "calm", "fear", "anger", "happiness"):
            continue
        k = (r["speaker"], r["grade"] or r["emotion"])
        if count.get(k, 0) < n_per:
            count[k] = count.get(k, 0) + 1
            keep.append(dict(r, path=str(DATA / r["path"])))
    return keep


def test_runtime_does_not_import_sklearn():
    code = "import sys, calltone.emotion.classifier as c; c.load(c.PROSODY_MODEL); print('sklearn' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize("model", [DEFAULT_MODEL, PROSODY_MODEL])
def test_shipped_models_load_and_are_documented(model):
    clf = EmotionClassifier(model)
    assert clf.labels == LABELS == ["calm", "anxious", "angry"]
    meta = clf.meta
    assert meta["feature_names"] == FEATURE_NAMES
    assert sum(b["size"] for b in meta["input_layout"]) == meta["n_inputs"]
    assert clf.session.get_inputs()[0].shape[1] == meta["n_inputs"]
    assert "cv" in meta and "clean" in meta["cv"] and "tel" in meta["cv"]


@needs_data
def test_predict_proba_batched_and_explain():
    clf = EmotionClassifier(PROSODY_MODEL)
    rows = [r for r in _subset(3) if r["speaker"] in ("ravdess-01", "ravdess-02")]
    import soundfile as sf

    X = np.stack([extract_features(sf.read(r["path"], dtype="float32")[0]) for r in rows])
    b = clf.new_baseline()
    b.update(X)
    P = clf.predict_proba(X, b)
    assert P.shape == (len(X), 3) and np.allclose(P.sum(1), 1, atol=1e-5)
    single = np.concatenate([clf.predict_proba(x[None], b) for x in X])
    assert np.allclose(P, single, atol=1e-5)
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as fh:
        calm_rows = [r for r in csv.DictReader(fh) if r["speaker"] == "ravdess-01" and r["grade"] == "calm"]
    calm = np.stack([extract_features(sf.read(str(DATA / r["path"]), dtype="float32")[0]) for r in calm_rows])
    b = clf.new_baseline()
    b.update(calm)  # 12 utterances: the reference is mostly this speaker's own
    cues = clf.explain(calm[0], b)
    for c in cues:
        assert {"name", "label", "value", "unit", "z"} <= set(c) and abs(c["z"]) >= 1.0
    # a huge pitch rise is explained as such
    x = calm[0].copy()
    x[FEATURE_NAMES.index("f0_mean")] += 10.0
    cues = clf.explain(x, b)
    pitch = [c for c in cues if c["name"] == "f0_mean"]
    assert pitch and pitch[0]["label"] == "voice pitch raised" and pitch[0]["z"] > 1.5 and pitch[0]["unit"] == "semitones"
    # empty baseline: measured against the population
    assert all(c["reference"] == "population" for c in clf.explain(x, clf.new_baseline()))


@needs_data
def test_onnx_matches_sklearn(tmp_path):
    from calltone.models.training.dataset import load_manifest
    from calltone.models.training.train import Config, Data, fit_and_export

    rows = _subset(3)
    man = tmp_path / "m.csv"
    with open(man, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    d = Data(load_manifest(man), ["clean", "aug_clean"], progress=False)
    cfg = Config(kind="svm", C=1.0, classes=["calm", "anxious", "angry"], tel_aug=False)
    out = tmp_path / "emotion_test.onnx"
    (model, gate), meta = fit_and_export(d, cfg, out, cv={"power": 1.0})
    assert gate is not None and meta["gate"]["power"] == 1.0
    clf = EmotionClassifier(out)
    b = clf.new_baseline()
    X = d.X["clean"]
    b.update(X)
    inp = clf.build_input(X, b)
    p_onnx, g_onnx = clf.run_model(inp)
    assert np.allclose(p_onnx, model.predict_proba(inp), atol=1e-4)
    assert np.allclose(g_onnx, gate.predict_proba(inp)[:, 0], atol=1e-4)


@needs_data
def test_eval_json_format(tmp_path):
    from calltone.models.training import evaluate

    rows = _subset(2)
    man = tmp_path / "m.csv"
    with open(man, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    buf = io.StringIO()
    with redirect_stdout(buf):
        res = evaluate.run(man, telephony=True, as_json=True, model_path=PROSODY_MODEL)
    printed = json.loads(buf.getvalue())
    assert printed == json.loads(json.dumps(res))
    for k in ("uar", "per_corpus", "per_language", "confusion", "labels", "n", "happy_as_angry"):
        assert k in printed
    assert printed["labels"] == ["calm", "anxious", "angry"]
    assert set(printed["per_language"]) == {"de", "en", "zh"}
    assert set(printed["per_corpus"]) == {"emodb", "ravdess", "casia"}
    conf = np.array(printed["confusion"])
    assert conf.shape == (3, 3) and conf.sum() == printed["n"] == sum(1 for r in rows if r["grade"])
    assert 0.0 <= printed["uar"] <= 1.0 and 0.0 <= printed["happy_as_angry"] <= 1.0


def test_upset_grades_are_explained_by_cues_pointing_that_way():
    """An angry clip, against the speaker's own calm clips: the cues offered for an angry
    grade all moved the aroused way (louder, higher, faster, tenser...)."""
    import csv

    import soundfile as sf

    from calltone.emotion.classifier import AROUSED_DIRECTION, PROSODY_MODEL, EmotionClassifier
    from calltone.emotion.features import extract_features

    from .conftest import EMOTION_SPEECH

    clf = EmotionClassifier(PROSODY_MODEL)
    rows = [r for r in csv.DictReader(open(EMOTION_SPEECH / "manifest.csv", encoding="utf-8")) if r["speaker"] == "ravdess-03"]
    feats = lambda r: extract_features(sf.read(EMOTION_SPEECH / r["path"], dtype="float32")[0])  # noqa: E731
    baseline = clf.new_baseline()
    for r in [r for r in rows if r["grade"] == "calm"][:8]:
        baseline.update(feats(r))
    explained = 0
    for r in [r for r in rows if r["grade"] == "angry"][:6]:
        cues = clf.explain(feats(r), baseline, toward="angry")
        explained += bool(cues)
        assert all(AROUSED_DIRECTION[c["name"]] * c["z"] > 0 for c in cues), cues
    assert explained >= 4


@needs_data
def test_expression_agreement_on_real_speakers():
    """RAVDESS actors act anger alike (their anger-vs-neutral shifts correlate); a speaker
    whose labels are swapped acts it the opposite way and scores below zero."""
    from calltone.models.training.agreement import agreement

    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["speaker"] in {f"ravdess-{i:02d}" for i in range(1, 7)}
                and r["emotion"] in ("anger", "neutral") and r["intensity"] in ("normal", "")]
    import soundfile as sf

    X = np.stack([extract_features(sf.read(DATA / r["path"], dtype="float32")[0], 16000) for r in rows])
    speakers = np.array([r["speaker"] for r in rows])
    emotions = np.array([r["emotion"] for r in rows])
    per = agreement(X, speakers, emotions, "anger", "neutral")
    assert set(per) == set(speakers)
    assert np.mean(list(per.values())) > 0.3
    swapped = emotions.copy()
    one = speakers == "ravdess-03"
    swapped[one] = np.where(emotions[one] == "anger", "neutral", "anger")
    per2 = agreement(X, speakers, swapped, "anger", "neutral")
    assert per2["ravdess-03"] < 0 < per["ravdess-03"]
