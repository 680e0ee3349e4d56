"""Emotion benchmarks.

    python bench/emotion.py

1. Speaker-grouped cross-validation of the shipped models (computed by
   `calltone train` and stored in the models' JSON sidecars): UAR clean and
   telephone, per language, happy/surprise graded angry.
2. Prosody feature cost: CPU milliseconds per second of audio, 16 kHz and 8 kHz.

Call-level accuracy (grades and escalations on whole calls) is measured only on speakers the scored
model never heard: bench/heldout.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "data" / "emotion-speech"


def cv_table() -> str:
    rows = ["| model | audio | UAR | de | en | zh | happy/surprise graded angry |", "|---|---|---|---|---|---|---|"]
    for name in ("emotion", "emotion_prosody"):
        meta = json.loads((REPO / "models" / f"{name}.json").read_text())
        cv = meta["cv"]
        shipped = cv["by_power"][str(cv["power"])] if "by_power" in cv else cv
        for audio in ("clean", "tel"):
            r = shipped[audio]
            pl = r["per_language"]
            rows.append(f"| {name}.onnx | {audio} | {r['uar']:.3f} | {pl.get('de', float('nan')):.3f} | {pl.get('en', float('nan')):.3f} | "
                        f"{pl.get('zh', float('nan')):.3f} | {100 * r['happy_as_angry']:.1f} % |")
    return "\n".join(rows)


def expression_agreement() -> str:
    """How alike the speakers of each corpus act each emotion (models/training/agreement.py)."""
    from calltone.models.training.agreement import PAIRS, agreement, by_group
    from calltone.models.training.dataset import embeddings_for, features_for, load_manifest

    m = load_manifest(CORPUS / "manifest.csv")
    speakers, emotions = m.col("speaker"), m.col("emotion")
    corpus_of = dict(zip(speakers, m.col("corpus")))
    sources = {"prosody (44)": features_for(m, "clean"), "Whisper embedding (1024)": embeddings_for(m, "clean")}
    corpora = sorted(set(corpus_of.values()))
    rows = ["| features | emotions | " + " | ".join(corpora) + " | CASIA speakers with each other |",
            "|---|---|" + "---|" * len(corpora) + "---|"]
    for name, X in sources.items():
        for a, b in PAIRS:
            per = agreement(X, speakers, emotions, a, b)
            g = by_group(per, corpus_of)
            casia = np.isin(speakers, [s for s in per if corpus_of[s] == "casia"])
            pair = agreement(X[casia], speakers[casia], emotions[casia], a, b)
            rows.append(f"| {name} | {a} vs {b} | " + " | ".join(f"{g.get(c, float('nan')):+.2f}" for c in corpora)
                        + f" | {np.mean(list(pair.values())):+.2f} |")
    return "\n".join(rows)


def feature_cost(n_clips: int = 60) -> str:
    import soundfile as sf
    import soxr

    from threadpoolctl import threadpool_limits  # one BLAS thread, as the runtime: idle BLAS threads spin and bill CPU time

    from calltone.emotion.features import extract_features

    rows = [r for r in csv.DictReader(open(CORPUS / "manifest.csv", encoding="utf-8"))][::37][:n_clips]
    audio = [sf.read(CORPUS / r["path"], dtype="float32")[0] for r in rows]
    out = ["| input | audio (s) | CPU (ms) | ms per s of audio | share of one core in real time |", "|---|---|---|---|---|"]
    for rate in (16000, 8000):
        clips = audio if rate == 16000 else [soxr.resample(a, 16000, 8000) for a in audio]
        seconds = sum(len(a) for a in clips) / rate
        with threadpool_limits(1):
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            for a in clips:
                extract_features(a, rate)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000
        out.append(f"| {rate // 1000} kHz | {seconds:.1f} | {cpu:.0f} | {cpu / seconds:.1f} | {cpu / seconds / 10:.2f} % |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\ncommand: python bench/emotion.py {' '.join(sys.argv[1:])}\n")
    print("### Cross-validated accuracy (speaker-grouped, from the model sidecars)\n\n" + cv_table() + "\n")
    print("### Do speakers act each emotion alike? (mean correlation of a speaker's shift with the other speakers')\n\n"
          + expression_agreement() + "\n")
    print("### Prosody feature cost (one thread)\n\n" + feature_cost() + "\n")
    print("Call-level figures: bench/heldout.py (calls of speakers the scored model never heard).")


if __name__ == "__main__":
    main()
