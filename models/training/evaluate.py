"""Evaluate a shipped emotion model on a manifest (the runtime path: onnxruntime only).

Speaker adaptation as at runtime but offline: each speaker's baseline is built from all of
that speaker's clips in the manifest (no labels used). Prints UAR, per-corpus and
per-language UAR, the 3x3 confusion matrix and the share of happiness/surprise clips graded
angry. NB: on the training corpora this measures the model on data it was trained on; the
speaker-independent (cross-validated) numbers are in the model's JSON sidecar under ``cv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from calltone.emotion.classifier import DEFAULT_MODEL, EmotionClassifier

from .dataset import GRADES, embeddings_for, features_for, load_manifest
from .metrics import report


def run(
    manifest: Path,
    telephony: bool = False,
    as_json: bool = False,
    model_path: Path | None = None,
    print_result: bool = True,
) -> dict:
    m = load_manifest(Path(manifest))
    clf = EmotionClassifier(model_path or DEFAULT_MODEL)
    variant = "tel" if telephony else "clean"
    X = features_for(m, variant)
    E = embeddings_for(m, variant) if clf.uses_embedding else None
    speakers = m.col("speaker")
    P = np.zeros((len(X), 3))
    for s in np.unique(speakers):
        idx = np.flatnonzero(speakers == s)
        b = clf.new_baseline()
        emb = None if E is None else E[idx]
        b.update(X[idx], embedding=emb)
        P[idx] = clf.predict_proba(X[idx], b, emb)
    grade_idx = np.array([GRADES.index(g) if g in GRADES else -1 for g in m.col("grade")])
    res = report(P, m.col("emotion"), grade_idx, m.col("corpus"), m.col("lang"))
    res["model"] = clf.model_path.name
    res["telephony"] = bool(telephony)
    if print_result:
        if as_json:
            print(json.dumps(res, indent=1))
        else:
            print(f"model {res['model']}  ({'telephone-simulated' if telephony else 'clean'} audio, n={res['n']} graded clips)")
            print(f"UAR {res['uar']:.3f}")
            for k, v in res["per_corpus"].items():
                print(f"  corpus {k:8s} UAR {v:.3f}")
            for k, v in res["per_language"].items():
                print(f"  lang   {k:8s} UAR {v:.3f}")
            print("confusion (rows true, cols predicted):", "  ".join(GRADES))
            for g, row in zip(GRADES, res["confusion"]):
                print(f"  {g:8s}" + "".join(f"{x:8d}" for x in row))
            if res["happy_as_angry"] is not None:
                print(f"happiness/surprise graded angry: {res['happy_as_angry']:.3f} (n={res['n_happy_surprise']})")
    return res


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--telephony", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model")
    a = ap.parse_args()
    run(Path(a.manifest), a.telephony, a.json, Path(a.model) if a.model else None)
