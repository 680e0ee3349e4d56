"""Batch scoring benchmark: how fast ``calltone score`` turns recorded calls into reports, Mandarin and English apart.

    python bench/batch.py [--calls 12] [--workers 2] [--seed 5] [--skip-packing]

Composes stereo 8 kHz telephone calls with ../shared/tools/make_calls.py (``--calls`` Mandarin
and ``--calls`` English ones, in a folder per language), then, per language:

1. runs ``calltone score`` on the language's folder in a subprocess, as a user would (worker
   processes, model loading, reports and index included): wall time, audio seconds per wall
   second and CPU seconds (all processes) per audio minute;
2. breaks the CPU down by stage (decode file, VAD, ASR, emotion, report) from one in-process
   pass over the same calls with one ASR thread, as one worker runs, with the encoder windows,
   decode batches and pack retries it took and WER (English) / CER (Mandarin) per channel
   against the calls' scripts;
3. measures what packing the agent's short utterances into shared decodes (``asr.batch_pack_s``,
   on by default) trades against one decode per utterance: ASR time and WER/CER.

Prints a Markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "data" / "emotion-speech"
MAKE_CALLS = SHARED / "tools" / "make_calls.py"
LANGUAGES = ("zh", "en")
ASR = "ASR (Whisper, 1 thread)"


def compose(out: Path, calls: int, seed: int) -> dict[str, list[Path]]:
    """``calls`` composed calls per language, in ``out/zh`` and ``out/en``."""
    for lang in LANGUAGES:
        subprocess.run([sys.executable, str(MAKE_CALLS), str(CORPUS), str(out / lang), "--calls", str(calls), "--lang", lang,
                        "--seed", str(seed), "--telephony"], check=True, capture_output=True)
    return {lang: sorted((out / lang).glob("*.wav")) for lang in LANGUAGES}


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
            "cpu_per_min": cpu / (audio_s / 60), "reports": len(list(out.glob("*.json")))}


@contextmanager
def patched(owner, name: str, make):
    """``owner.name`` replaced by ``make(original)`` for the block."""
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def stages(files: list[Path], pack_speech_s: float | None = None) -> dict:
    """One in-process pass (1 ASR thread, 1 CPU thread: one worker's share of a 2-core machine):
    thread CPU time per stage, encoder windows and decode batches; also the transcripts per channel."""
    from contextlib import ExitStack

    from calltone.batch import output, scorer
    from calltone.emotion import channel
    from calltone.runtime import Runtime
    from calltone.settings import Settings
    from calltone.speech import asr, audio, vad

    cpu: dict[str, float] = {}
    windows = [0]

    def timed(stage: str):
        def make(fn):
            def wrapper(*a, **kw):
                t = time.thread_time()
                try:
                    return fn(*a, **kw)
                finally:
                    cpu[stage] = cpu.get(stage, 0.0) + time.thread_time() - t
            return wrapper
        return make

    def counted(fn):
        def encode(self, feats):
            windows[0] += len(feats)
            return fn(self, feats)
        return encode

    settings = Settings()
    settings.asr.cpu_threads = 1
    settings.asr.workers = 1  # the decoder in this process, so its thread's CPU time is measured here
    rt = Runtime.create(settings, cpu_workers=1)
    if pack_speech_s is not None:
        rt.asr.pack_speech_s = pack_speech_s
    reports = output.ReportDir(Path(tempfile.mkdtemp(prefix="calltone-bench-stage-")))
    transcripts = {}
    with ExitStack() as stack:
        for owner, name, make in ((audio, "load_recording", timed("decode file")), (vad.StreamingVad, "feed", timed("VAD")),
                                  (channel, "voice_features", timed("emotion (features + ONNX)")),
                                  (channel.EmotionChannel, "_classify", timed("emotion (features + ONNX)")),
                                  (output.ReportDir, "save", timed("report (JSON + HTML)")),
                                  (asr.WhisperEngine, "encode", counted)):
            stack.enter_context(patched(owner, name, make))
        t0, p0 = time.perf_counter(), time.process_time()
        for f in files:
            r = asyncio.run(scorer.score_recording(f, rt, scorer.ScoreOptions()))
            reports.save(f.stem + f.parent.name, r)
            transcripts[f] = {ch: " ".join(s.text for s in r.segments if s.channel == ch) for ch in ("customer", "agent")}
        wall, proc = time.perf_counter() - t0, time.process_time() - p0
    cpu[ASR] = rt.asr.stats.busy_s  # the ASR thread is busy on CPU while it decodes
    cpu["other (event loop, pipeline glue)"] = max(0.0, proc - sum(cpu.values()))
    stats = rt.asr.snapshot()
    rt.close()
    return {"cpu": cpu, "wall_s": wall, "process_cpu_s": proc, "transcripts": transcripts, "windows": windows[0],
            "batches": stats.batches, "pack_retries": stats.pack_retries, "errors": error_rates(files, transcripts)}


def error_rates(files: list[Path], transcripts: dict) -> dict[str, float]:
    """Mean WER (English) / CER (Mandarin) per channel against the composed calls' scripts."""
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
            out.setdefault(ch, []).append(e)
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def speed_table(files: dict[str, list[Path]], audio: dict[str, float], e2e: dict[str, dict]) -> list[str]:
    lines = ["| language | calls | audio min | wall s (all included) | x real time (all included) | x real time "
             "(as `calltone score` prints it) | CPU s per audio min (all processes) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for lang in LANGUAGES:
        e = e2e[lang]
        lines.append(f"| {lang} | {len(files[lang])} | {audio[lang] / 60:.1f} | {e['wall_s']:.1f} | **{e['x_wall']:.1f}x** | "
                     f"{e['x_scoring']:.1f}x | {e['cpu_per_min']:.2f} |")
    total, wall, cpu = sum(audio.values()), sum(e["wall_s"] for e in e2e.values()), sum(e["cpu_s"] for e in e2e.values())
    lines.append(f"| both (the two runs) | {sum(map(len, files.values()))} | {total / 60:.1f} | {wall:.1f} | {total / wall:.1f}x | "
                 f"| {cpu / (total / 60):.2f} |")
    return lines


def stage_table(audio: dict[str, float], plain: dict[str, dict]) -> list[str]:
    lines = ["| stage | " + " | ".join(f"{lang} CPU s | {lang} ms per audio s" for lang in LANGUAGES) + " |",
             "|---|" + "---:|---:|" * len(LANGUAGES)]
    first = plain[LANGUAGES[0]]["cpu"]
    for stage in sorted(first, key=lambda k: -first[k]):
        cells = [f"{plain[lang]['cpu'].get(stage, 0.0):.1f} | {1000 * plain[lang]['cpu'].get(stage, 0.0) / audio[lang]:.1f}"
                 for lang in LANGUAGES]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


def work_table(audio: dict[str, float], plain: dict[str, dict]) -> list[str]:
    lines = ["| language | process CPU s | wall s | encoder windows | windows per audio min | decode batches | pack retries "
             "| customer WER/CER | agent WER/CER |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lang in LANGUAGES:
        p = plain[lang]
        lines.append(f"| {lang} | {p['process_cpu_s']:.1f} | {p['wall_s']:.1f} | {p['windows']} | {p['windows'] / (audio[lang] / 60):.1f} "
                     f"| {p['batches']} | {p['pack_retries']} | {p['errors']['customer']:.3f} | {p['errors']['agent']:.3f} |")
    return lines


def packing_table(files: dict[str, list[Path]], plain: dict[str, dict]) -> list[str]:
    lines = ["| language | | ASR s | wall s | encoder windows | WER/CER customer | WER/CER agent |", "|---|---|---:|---:|---:|---:|---:|"]
    for lang in LANGUAGES:
        single = stages(files[lang], pack_speech_s=0.0)
        for label, p in (("packed, 5 s (default)", plain[lang]), ("one decode per utterance", single)):
            lines.append(f"| {lang} | {label} | {p['cpu'][ASR]:.1f} | {p['wall_s']:.1f} | {p['windows']} | "
                         f"{p['errors']['customer']:.3f} | {p['errors']['agent']:.3f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=12, help="calls per language")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-packing", action="store_true", help="skip the packing on/off comparison")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="calltone-bench-calls-"))
    files = compose(folder, args.calls, args.seed)
    audio = {lang: duration(f) for lang, f in files.items()}
    print(f"calls in {folder}: " + ", ".join(f"{lang} {len(files[lang])} calls, {audio[lang] / 60:.1f} min" for lang in LANGUAGES),
          file=sys.stderr)
    e2e = {lang: end_to_end(folder / lang, args.workers, audio[lang]) for lang in LANGUAGES}
    print(f"end to end: {e2e}", file=sys.stderr)
    plain = {lang: stages(files[lang]) for lang in LANGUAGES}
    print(f"stages: { {lang: p['cpu'] for lang, p in plain.items()} }", file=sys.stderr)
    lines = [
        "### Batch scoring (`calltone score`), Mandarin and English apart",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"date {time.strftime('%Y-%m-%d %H:%M %Z')}; command `python bench/batch.py --calls {args.calls} --workers {args.workers}"
        f"{' --skip-packing' if args.skip_packing else ''}`.",
        f"Composed stereo 8 kHz telephone calls (make_calls.py --telephony, seed {args.seed}, {args.calls} per language), "
        f"one `calltone score` run per language ({args.workers} worker processes):",
        "",
        *speed_table(files, audio, e2e),
        "",
        "CPU by stage, one in-process pass per language over the same calls (1 ASR thread, as in one worker), "
        "with the work it took and WER/CER per channel against the calls' scripts:",
        "",
        *stage_table(audio, plain),
        "",
        *work_table(audio, plain),
    ]
    if not args.skip_packing:
        lines += ["", "Packing the agent's short utterances into shared decodes (speech/packing.py, `asr.batch_pack_s`, "
                  "default 5 s) against one decode per utterance (`asr.batch_pack_s=0`), one in-process pass each:", "",
                  *packing_table(files, plain)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
