"""Call-level emotion and escalation accuracy on speakers the scored model never heard.

For each speaker-grouped fold k (``speaker_folds``, the grouping ``calltone train`` cross-validates
with: each corpus's speakers spread over 5 folds, CASIA's two speakers in different folds):

1. a fold model is trained on every clip **except** fold k's speakers (same recipe as the shipped
   model: prosody SVM + prosody/Whisper-embedding logistic regression, telephone augmentation;
   the angry-vs-happy gate powers of the shipped model);
2. calls are composed from fold k's speakers only (``../shared/tools/make_calls.py``): 8 kHz G.711
   and 16 kHz, customer on channel 0 and on channel 1, every language in the fold;
3. they are scored through the real batch pipeline (``calltone eval --calls`` with
   ``emotion.model_dir`` = the fold model) and compared with their ground truth.

Figures are pooled over folds.  Two disjoint seed sets: ``tune`` (for choosing tracker, fusion and
escalation settings) and ``report`` (the figures in docs/benchmarks.md).

    python bench/heldout.py --set report            # trains missing fold models, composes, scores
    python bench/heldout.py --set tune --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "data" / "emotion-speech"
SEEDS = {"tune": (1, 0), "report": (2, 2)}  # (seed, rotation of kinds over conditions): disjoint call sets
CONDITIONS = [(True, 0), (True, 1), (False, 0), (False, 1)]  # (8 kHz G.711, customer channel)
KINDS = ["steady", "escalate", "recover", "flare"]  # make_calls.py's call kinds, in its order


def fold_speakers(n_folds: int = 5) -> list[list[str]]:
    from calltone.models.training.dataset import load_manifest
    from calltone.models.training.metrics import speaker_folds

    m = load_manifest(CORPUS / "manifest.csv")
    spk, corpus = m.col("speaker"), m.col("corpus")
    return [sorted(set(spk[idx].tolist())) for idx in speaker_folds(spk, corpus, n_folds)]


def train_folds(work: Path, folds: list[list[str]]) -> None:
    """Fold models, each trained without its fold's speakers (skipped when already there)."""
    import numpy as np

    from calltone.models.training.dataset import GRADES, load_manifest
    from calltone.models.training.train import Config, Data, fit_and_export

    todo = [k for k in range(len(folds)) if not (work / f"fold{k}" / "emotion.onnx").exists()]
    if not todo:
        return
    m = load_manifest(CORPUS / "manifest.csv")
    d = Data(m, ["clean", "tel", "aug_tel", "aug_clean"], embedding=True, progress=True)
    shipped = {f: json.loads((REPO / "models" / f).read_text())["gate"]["power"] for f in ("emotion.json", "emotion_prosody.json")}
    prosody = Config(kind="svm", C=1.0, classes=list(GRADES), tel_aug=True)
    main = Config(kind="lr", C=0.01, classes=list(GRADES), use_embedding=True, tel_aug=True)
    for k in todo:
        t0 = time.time()
        train = np.flatnonzero(~np.isin(d.speaker, folds[k]))
        out = work / f"fold{k}"
        note = {"held_out_speakers": folds[k], "cv_protocol": "bench/heldout.py fold model: not cross-validated"}
        fit_and_export(d, prosody, out / "emotion_prosody.onnx", {"power": shipped["emotion_prosody.json"]}, note, idx=train)
        fit_and_export(d, main, out / "emotion.onnx", {"power": shipped["emotion.json"]},
                       {**note, "prosody_model": "emotion_prosody.onnx"}, idx=train)
        print(f"fold {k}: model without {', '.join(folds[k])} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


def _speaker_corpus(work: Path, speaker: str, cheerful: bool = False) -> Path:
    """A corpus folder with one speaker's clips (manifest + links to the clips); ``cheerful``: their
    happiness and surprise clips count as calm too (make_calls.py then mixes them into calm turns)."""
    corpus = work / ("corpora-cheerful" if cheerful else "corpora") / speaker
    if (corpus / "manifest.csv").exists():
        return corpus
    corpus.mkdir(parents=True, exist_ok=True)
    with open(CORPUS / "manifest.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["speaker"] == speaker]
    if cheerful:
        rows = [{**r, "grade": "calm"} if r["emotion"] in ("happiness", "surprise") else r for r in rows]
    with open(corpus / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for sub in {r["path"].split("/")[0] for r in rows}:
        (corpus / sub).symlink_to(CORPUS / sub)
    return corpus


def compose(work: Path, k: int, speakers: list[str], which: str) -> Path:
    """Fold k's calls of one seed set (skipped when already there): every speaker of the fold is the
    customer of one call of each kind, each kind under another of the four conditions (8 / 16 kHz x
    customer on channel 0 / 1), rotating over speakers.  The agent channel is the same speaker's calm
    clips (make_calls.py with a one-speaker corpus), so no call holds a voice the fold model heard."""
    out = work / f"fold{k}" / f"calls-{which}"
    if out.exists() and any(out.glob("*.json")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    seed, offset = SEEDS[which]
    for j, speaker in enumerate(speakers):
        corpus = _speaker_corpus(work, speaker)
        for c, (telephony, channel) in enumerate(CONDITIONS):
            kind_i = (j + c + offset) % len(KINDS)
            tmp = _make_call(corpus, work / "tmp" / f"{speaker}-{c}", kind_i, seed * 1000 + 10 * j + c + 100 * k,
                             telephony, channel)
            for ext in (".wav", ".json"):
                tmp.with_suffix(ext).rename(out / f"{speaker}-{'8k' if telephony else '16k'}-ch{channel}-{KINDS[kind_i]}{ext}")
            shutil.rmtree(tmp.parent)
        _cheerful_call(work, k, j, speaker, which, out)
    return out


def _cheerful_call(work: Path, k: int, j: int, speaker: str, which: str, out: Path) -> None:
    """A steady call whose calm turns mix the speaker's neutral, happy and surprised clips (graded calm:
    a cheerful caller must not read as an angry one)."""
    seed, offset = SEEDS[which]
    telephony, channel = CONDITIONS[(j + offset) % len(CONDITIONS)]
    tmp = _make_call(_speaker_corpus(work, speaker, cheerful=True), work / "tmp" / f"{speaker}-cheerful", 0,
                     seed * 1000 + 10 * j + 7 + 100 * k, telephony, channel)
    dest = out / f"{speaker}-{'8k' if telephony else '16k'}-ch{channel}-cheerful"
    tmp.with_suffix(".wav").rename(dest.with_suffix(".wav"))
    truth = json.loads(tmp.with_suffix(".json").read_text())
    (dest.with_suffix(".json")).write_text(json.dumps({**truth, "kind": "cheerful"}, ensure_ascii=False, indent=1))
    shutil.rmtree(tmp.parent)


def _make_call(corpus: Path, folder: Path, kind_i: int, seed: int, telephony: bool, channel: int) -> Path:
    """One call of kind ``KINDS[kind_i]`` composed by make_calls.py into ``folder``: its path without the suffix
    (make_calls.py writes the kinds in order, so it composes kind_i + 1 calls and the last is this one)."""
    cmd = [sys.executable, str(SHARED / "tools" / "make_calls.py"), str(corpus), str(folder), "--calls", str(kind_i + 1),
           "--seed", str(seed), "--customer-channel", str(channel)]
    subprocess.run(cmd + (["--telephony"] if telephony else []), check=True, capture_output=True)
    return folder / f"call{kind_i:03d}-{KINDS[kind_i]}"


def score_fold(work: Path, k: int, calls: Path, workers: int | None) -> list:
    from calltone.batch.evaluation import score_labelled
    from calltone.batch.labels import find_labelled_calls
    from calltone.settings import Settings

    settings = Settings()
    settings.emotion.model_dir = work / f"fold{k}"
    found, problems = find_labelled_calls(calls)
    if problems:
        raise SystemExit(f"fold {k}: {problems}")
    outcomes = []
    for rec, done, result in score_labelled(found, settings, workers):
        if result is None:
            raise SystemExit(f"{rec.audio}: {done.error}")
        result.name = f"fold{k}/{rec.audio.parent.name}/{rec.name}"
        outcomes.append(result)
    return outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=list(SEEDS), default="report", help="which seed set of calls to score")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("CALLTONE_HELDOUT", "/tmp/calltone-heldout")),
                    help="fold models and composed calls (reused between runs)")
    ap.add_argument("--folds", help="only these folds, e.g. 0,3")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--json", type=Path, help="write every call's outcome and the pooled figures here")
    a = ap.parse_args()
    from calltone.batch.evaluation import figures, format_figures

    folds = fold_speakers()
    ks = [int(x) for x in a.folds.split(",")] if a.folds else list(range(len(folds)))
    train_folds(a.work, folds)
    outcomes, t0 = [], time.time()
    for k in ks:
        calls = compose(a.work, k, folds[k], a.set)
        outcomes += score_fold(a.work, k, calls, a.workers)
        print(f"fold {k} ({', '.join(folds[k])}): {len(outcomes)} calls so far, {time.time() - t0:.0f} s",
              file=sys.stderr, flush=True)
    f = figures(outcomes)
    print(f"held-out speakers, seed set '{a.set}', folds {ks}, {time.strftime('%Y-%m-%d')}")
    print(format_figures(f))
    if a.json:
        a.json.write_text(json.dumps({"set": a.set, "folds": {k: folds[k] for k in ks},
                                      "calls": [o.__dict__ for o in outcomes], "figures": f.as_dict()}, indent=1))


if __name__ == "__main__":
    main()
