"""Emotion benchmarks.

    python bench/emotion.py [--calls 24]

1. Speaker-grouped cross-validation of the shipped models (computed by
   `calltone train` and stored in the models' JSON sidecars): UAR clean and
   telephone, per language, happy/surprise graded angry.
2. Prosody feature cost: CPU milliseconds per second of audio, 16 kHz and 8 kHz.
3. Escalation over composed calls (../shared/tools/make_calls.py: half 16 kHz with
   any language, half 8 kHz telephony English) with the shipped defaults: false alerts on steady/recover
   calls, delay from anger onset to the alert on escalate/flare calls.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "data" / "emotion-speech"
sys.path.insert(0, str(REPO / "bench"))


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


def escalation(n_calls: int) -> str:
    from tune_escalation import record, replay

    from calltone.runtime import Runtime
    from calltone.settings import Settings

    rt = Runtime.create(Settings())
    recorded = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for tel, lang in ((False, "any"), (True, "en")):  # 16 kHz: Mandarin + German speakers; 8 kHz: English
            d = Path(tmp) / ("tel" if tel else "clean")
            args = [sys.executable, str(SHARED / "tools" / "make_calls.py"), str(CORPUS), str(d), "--calls", str(n_calls // 2),
                    "--seed", "9", "--lang", lang]
            subprocess.run(args + (["--telephony"] if tel else []), check=True, capture_output=True)
            recorded += [(tel, truth, log) for truth, log in record(d, rt)]
    wall = time.perf_counter() - t0
    lines = ["| call | language | audio | kind | anger onset (s) | alerts (s) | result |", "|---|---|---|---|---|---|---|"]
    false_alerts, delays, missed = 0, [], 0
    for tel, truth, log in recorded:
        alerts = replay(truth, log, {}, {}, rt.emotion)
        onset = truth["escalation_onset_s"]
        if truth["escalation_expected"]:
            after = [a for a in alerts if a >= onset]
            ok = bool(after) and after[0] - onset <= 10.0 and not [a for a in alerts if a < onset]
            result = f"alert after {after[0] - onset:.1f} s" if after else "missed"
            if ok:
                delays.append(after[0] - onset)
            else:
                missed += 1
                result += " (FAIL)"
        else:
            false_alerts += len(alerts)
            result = "no alert" if not alerts else f"{len(alerts)} false alert(s)"
        lines.append(f"| {truth['call']} | {truth['language']} | {'8 kHz tel' if tel else '16 kHz'} | {truth['kind']} | "
                     f"{onset if onset is not None else '-'} | {', '.join(f'{a:.1f}' for a in alerts) or '-'} | {result} |")
    rt.close()
    expected = sum(1 for _, t, _ in recorded if t["escalation_expected"])
    summary = (f"\n{len(recorded)} calls ({wall:.0f} s to grade): {len(delays)}/{expected} escalations alerted within 10 s of anger onset "
               f"(mean {np.mean(delays):.1f} s, max {max(delays):.1f} s); {missed} missed or late; "
               f"{false_alerts} false alerts on {len(recorded) - expected} steady/recover calls.")
    return "\n".join(lines) + "\n" + summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=24)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\ncommand: python bench/emotion.py {' '.join(sys.argv[1:])}\n")
    print("### Cross-validated accuracy (speaker-grouped, from the model sidecars)\n\n" + cv_table() + "\n")
    print("### Do speakers act each emotion alike? (mean correlation of a speaker's shift with the other speakers')\n\n"
          + expression_agreement() + "\n")
    print("### Prosody feature cost (one thread)\n\n" + feature_cost() + "\n")
    print(f"### Escalation on {a.calls} composed calls (shipped defaults)\n\n" + escalation(a.calls) + "\n")


if __name__ == "__main__":
    main()
