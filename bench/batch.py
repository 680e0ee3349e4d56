"""Batch scoring benchmark: how fast ``calltone score`` turns recorded calls into reports.

    python bench/batch.py [--calls 8] [--workers 2] [--skip-packing]

Composes stereo 8 kHz telephone calls with ../shared/tools/make_calls.py (half
English, half Mandarin; ``--calls`` of each), then:

1. runs ``calltone score`` on them in a subprocess, as a user would (worker processes,
   model loading, reports and index included): audio seconds per wall second and per
   CPU second (all processes);
2. breaks the CPU down by stage (decode file, VAD, ASR, emotion, report) from one
   in-process pass over the same calls with one ASR thread, as one worker runs;
3. measures what packing the agent's short utterances into shared decodes
   (``asr.batch_pack_s``, on by default) trades against one decode per utterance: speed
   and WER (English) / CER (Mandarin) per channel against the calls' scripts.

Prints a Markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "data" / "emotion-speech"
MAKE_CALLS = SHARED / "tools" / "make_calls.py"


def compose(out: Path, calls: int, seed: int) -> list[Path]:
    for lang in ("en", "zh"):
        subprocess.run([sys.executable, str(MAKE_CALLS), str(CORPUS), str(out / lang), "--calls", str(calls), "--lang", lang,
                        "--seed", str(seed), "--telephony"], check=True, capture_output=True)
    return sorted(out.glob("*/*.wav"))


def duration(files: list[Path]) -> float:
    import soundfile as sf

    return sum(sf.info(str(f)).duration for f in files)


def end_to_end(folder: Path, workers: int, audio_s: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="calltone-bench-reports-"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "calltone.cli", "score", str(folder), "--out", str(out), "--workers", str(workers)],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        sys.exit(f"calltone score failed:\n{run.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((ln for ln in run.stderr.splitlines() if "real time" in ln), "")
    scoring = float(re.search(r"in ([\d.]+) s", line).group(1)) if line else wall
    return {"wall_s": wall, "cpu_s": cpu, "scoring_wall_s": scoring, "x_wall": audio_s / wall, "x_scoring": audio_s / scoring,
            "per_cpu": audio_s / cpu, "reports": len(list(out.glob("*.json")))}


def stages(files: list[Path], pack_speech_s: float | None = None) -> dict:
    """One in-process pass (1 ASR thread, 1 CPU thread: one worker's share of a 2-core machine),
    thread CPU time per stage; also the agent/customer transcripts for WER."""
    from calltone.batch import output, scorer
    from calltone.emotion import channel
    from calltone.runtime import Runtime
    from calltone.settings import Settings
    from calltone.speech import audio, vad

    cpu: dict[str, float] = {}

    def timed(owner, name: str, stage: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*a, **kw):
            t = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                cpu[stage] = cpu.get(stage, 0.0) + time.thread_time() - t

        setattr(owner, name, wrapper)

    settings = Settings()
    settings.asr.cpu_threads = 1
    rt = Runtime.create(settings, cpu_workers=1)
    if pack_speech_s is not None:
        rt.asr.pack_speech_s = pack_speech_s
    timed(audio, "load_recording", "decode file")
    timed(vad.StreamingVad, "feed", "VAD")
    timed(channel.EmotionChannel, "_score", "emotion (features + ONNX)")
    timed(output.ReportDir, "save", "report (JSON + HTML)")
    reports = Path(tempfile.mkdtemp(prefix="calltone-bench-stage-"))
    rd = output.ReportDir(reports)
    transcripts = {}
    t0, p0 = time.perf_counter(), time.process_time()
    for f in files:
        r = asyncio.run(scorer.score_recording(f, rt, scorer.ScoreOptions()))
        rd.save(f.stem + f.parent.name, r)
        transcripts[f] = {ch: " ".join(s.text for s in r.segments if s.channel == ch) for ch in ("customer", "agent")}
    wall, proc = time.perf_counter() - t0, time.process_time() - p0
    cpu["ASR (Whisper, 1 thread)"] = rt.asr.stats.busy_s  # the ASR thread is busy on CPU while it decodes
    cpu["other (event loop, pipeline glue)"] = max(0.0, proc - sum(cpu.values()))
    decodes = rt.asr.stats.batches
    rt.close()
    return {"cpu": cpu, "wall_s": wall, "process_cpu_s": proc, "transcripts": transcripts, "decodes": decodes}


def error_rates(files: list[Path], transcripts: dict) -> dict[str, float]:
    import json

    import jiwer

    out: dict[str, list[float]] = {}
    for f in files:
        truth = json.loads(f.with_suffix(".json").read_text())
        zh = truth["language"] == "zh"
        for ch in ("customer", "agent"):
            ref = " ".join(s["text"] for s in truth["segments"] if s["channel"] == ch)
            hyp = transcripts[f][ch]
            if zh:
                e = jiwer.cer(re.sub(r"\W", "", ref), re.sub(r"\W", "", hyp) or "-")
            else:
                norm = lambda s: re.sub(r"[^\w\s']", " ", s.lower())  # noqa: E731
                e = jiwer.wer(norm(ref), norm(hyp) or "-")
            out.setdefault(f"{'zh CER' if zh else 'en WER'} {ch}", []).append(e)
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=8, help="calls per language")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-packing", action="store_true", help="skip the packing on/off comparison")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="calltone-bench-calls-"))
    files = compose(folder, args.calls, args.seed)
    audio_s = duration(files)
    print(f"{len(files)} calls, {audio_s / 60:.1f} min of stereo 8 kHz audio", file=sys.stderr)
    e2e = end_to_end(folder, args.workers, audio_s)
    print(f"end to end: {e2e}", file=sys.stderr)
    plain = stages(files)
    print(f"stages: {plain['cpu']}", file=sys.stderr)
    lines = [
        "### Batch scoring (`calltone score`)",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"date {time.strftime('%Y-%m-%d')}; command `python bench/batch.py --calls {args.calls} --workers {args.workers}`.",
        f"{len(files)} composed stereo 8 kHz telephone calls (make_calls.py --telephony, seed {args.seed}, "
        f"{args.calls} English + {args.calls} Mandarin), {audio_s / 60:.1f} min of audio.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `calltone score` wall time, all included (start, model loading, {args.workers} worker processes, reports) | {e2e['wall_s']:.1f} s |",
        f"| audio seconds per wall second, all included | **{e2e['x_wall']:.1f}x** |",
        f"| audio seconds per wall second, as `calltone score` prints it (from starting the workers; model loading included) | **{e2e['x_scoring']:.1f}x** |",
        f"| audio seconds per CPU second (all processes) | {e2e['per_cpu']:.1f} |",
        "",
        f"CPU by stage, one in-process pass over the same calls (1 ASR thread, as in one worker): "
        f"{plain['process_cpu_s']:.1f} CPU s in {plain['wall_s']:.1f} s wall",
        "",
        "| stage | CPU s | share | ms per audio s |",
        "|---|---|---|---|",
    ]
    total = sum(plain["cpu"].values())
    for stage, s in sorted(plain["cpu"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {stage} | {s:.1f} | {100 * s / total:.0f} % | {1000 * s / audio_s:.1f} |")
    if not args.skip_packing:
        single = stages(files, pack_speech_s=0.0)
        er_d, er_s = error_rates(files, plain["transcripts"]), error_rates(files, single["transcripts"])
        lines += [
            "",
            "Packing the agent's short utterances into shared decodes (speech/packing.py, `asr.batch_pack_s`, "
            "default 5 s) against one decode per utterance (`asr.batch_pack_s=0`), same calls, one in-process pass "
            "each (1 ASR thread); WER/CER per channel against the calls' scripts:",
            "",
            "| | ASR CPU s | wall s | " + " | ".join(er_d) + " |",
            "|---|---|---|" + "---|" * len(er_d),
            f"| packed, 5 s (default) | {plain['cpu']['ASR (Whisper, 1 thread)']:.1f} | {plain['wall_s']:.1f} | "
            + " | ".join(f"{v:.3f}" for v in er_d.values()) + " |",
            f"| one decode per utterance | {single['cpu']['ASR (Whisper, 1 thread)']:.1f} | {single['wall_s']:.1f} | "
            + " | ".join(f"{er_s.get(k, float('nan')):.3f}" for k in er_d) + " |",
        ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
