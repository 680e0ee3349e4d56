"""ASR benchmarks: offline real-time factor and live concurrent channels.

    python bench/asr.py offline            # RTF of base and tiny.en, int8, 2 threads
    python bench/asr.py live [--n 1 2 4 8 16] [--seconds 60]
    python bench/asr.py all                 # both; prints markdown tables
    python bench/asr.py cer [--lang zh en] [--condition clean g711] [--n-zh 80] [--n-en 30] [--jsonl FILE]
                                            # transcript accuracy side by side with faster-whisper (bench/asr_accuracy.py)

Live: N channels (N/2 stereo calls composed by ../shared/tools/make_calls.py from
real speech, 8 kHz telephony) are pushed through CallPipeline in 20 ms frames at
real time, all sharing one ASR worker, as in the server.  Reported: final-segment
latency after the utterance ends (wall time from feeding the audio at the segment's
end to the final event; includes the VAD's 0.5 s end-of-speech wait), partial cadence
while speaking, ASR lag, CPU use of the process and whether it kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPEECH = SHARED / "data" / "speech"
CORPUS = SHARED / "data" / "emotion-speech"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


# -- offline ---------------------------------------------------------------------------------
def bench_offline() -> list[dict]:
    """RTF of faster-whisper's own offline path and of calltone's pipeline, per model."""
    from calltone.pipeline import PipelineOptions, run_recording
    from calltone.runtime import Runtime
    from calltone.settings import Settings
    from calltone.speech.audio import load_recording
    from calltone.speech.decoding import LIVE

    rec = load_recording(SPEECH / "multilingual.mp3", mono=True)
    audio = rec.channels["customer"][: 16000 * 30]  # the English part
    seconds = len(audio) / 16000
    rows = []
    for model in ("base", "tiny.en"):
        settings = Settings()
        settings.asr.model = model
        settings.asr.workers = 1  # the decoder in this process: faster-whisper's own transcribe runs on its model
        rt = Runtime.create(settings)
        fw = rt.asr.decoders[0]._fw
        list(fw.transcribe(audio[:16000], language="en", beam_size=1)[0])  # warm up
        t0, c0 = time.perf_counter(), cpu_seconds()
        segs, _ = fw.transcribe(audio, language="en", beam_size=1, temperature=0.0)
        text = " ".join(s.text for s in segs)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        rows.append(dict(model=model, path="faster-whisper transcribe (30 s windows)", audio_s=seconds, wall_s=wall,
                         cpu_s=cpu, rtf=wall / seconds, words=len(text.split())))
        t0, c0 = time.perf_counter(), cpu_seconds()
        events = asyncio.run(run_recording("bench", {"customer": audio}, rt, PipelineOptions(language="en", decode=LIVE.without_partials(), emotion=False), block_s=30.0))
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        words = sum(len(e.text.split()) for e in events if e.type == "transcript.final")
        rows.append(dict(model=model, path="calltone pipeline (VAD + short windows, word times)", audio_s=seconds, wall_s=wall,
                         cpu_s=cpu, rtf=wall / seconds, words=words))
        rt.close()
    return rows


# -- live ------------------------------------------------------------------------------------
def compose_calls(n_calls: int, out: Path, lang: str = "en") -> list[Path]:
    subprocess.run([sys.executable, str(SHARED / "tools" / "make_calls.py"), str(CORPUS), str(out), "--calls", str(n_calls),
                    "--telephony", "--lang", lang, "--seed", "11"], check=True, capture_output=True)
    return sorted(out.glob("call*.wav"))


async def live_run(n_channels: int, seconds: float, calls: list[Path], runtime) -> dict:
    from calltone.pipeline import CallPipeline, PipelineOptions
    from calltone.speech.audio import load_recording

    n_calls = max(1, n_channels // 2)
    recs = [load_recording(calls[i % len(calls)]) for i in range(n_calls)]
    roles = ["customer", "agent"] if n_channels > 1 else ["customer"]
    latencies: list[float] = []
    partial_times: dict[str, list[float]] = {}
    frame = 320  # 20 ms at 16 kHz
    loop = asyncio.get_running_loop()
    start = loop.time()

    def sink_for(call_id: str):
        def sink(e) -> None:
            now = loop.time()
            if e.type == "transcript.final":
                fed_at = start + e.end  # the audio at the segment's end was fed at this time
                latencies.append(now - fed_at)
            elif e.type == "transcript.partial":
                partial_times.setdefault(f"{call_id}/{e.channel}", []).append(now)
        return sink

    pipes = [CallPipeline(f"c{i}", runtime, PipelineOptions(language="en", roles=roles), sink_for(f"c{i}")) for i in range(n_calls)]
    c0 = cpu_seconds()
    total = int(seconds * 16000)
    late_frames = 0
    lags = []

    async def feed(i: int) -> None:
        nonlocal late_frames
        rec = recs[i]
        chans = {r: rec.channels[r] for r in roles}
        n = min(total, min(len(x) for x in chans.values()))
        for k in range(0, n, frame):
            due = start + (k + frame) / 16000
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:
                late_frames += 1
            await pipes[i].push({r: x[k : k + frame] for r, x in chans.items()})

    async def watch() -> None:
        while True:
            lags.append(runtime.asr.lag_s())
            await asyncio.sleep(0.5)

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(feed(i) for i in range(n_calls)))
    fed_wall = loop.time() - start
    await asyncio.gather(*(p.finish() for p in pipes))
    watcher.cancel()
    cpu = cpu_seconds() - c0
    cadences = [b - a for ts in partial_times.values() for a, b in zip(ts, ts[1:]) if b - a < 3.0]
    q = lambda xs, p: float(np.percentile(xs, p)) if xs else float("nan")  # noqa: E731
    return dict(channels=n_calls * len(roles), audio_s=round(seconds, 1), finals=len(latencies),
                final_p50_s=q(latencies, 50), final_p95_s=q(latencies, 95), final_max_s=max(latencies, default=float("nan")),
                partial_cadence_s=statistics.median(cadences) if cadences else float("nan"),
                asr_lag_p95_s=q(lags, 95), cpu_cores=cpu / max(fed_wall, 1e-9), realtime=fed_wall <= seconds * 1.05 and late_frames == 0,
                wall_s=fed_wall)


def bench_live(ns: list[int], seconds: float) -> list[dict]:
    from calltone.runtime import Runtime
    from calltone.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        calls = compose_calls(max(1, max(ns) // 2), Path(tmp))
        rt = Runtime.create(Settings())
        rows = []
        for n in ns:
            row = asyncio.run(live_run(n, seconds, calls, rt))
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
        rt.close()
    return rows


def bench_cer(a: argparse.Namespace) -> None:
    from asr_accuracy import run_cer  # bench/ is on sys.path when run as a script

    rows = []

    def out(row: dict) -> None:
        hyps = row.pop("hyps")
        print(json.dumps(row), file=sys.stderr, flush=True)
        if a.jsonl:
            with open(a.jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps({**row, "hyps": hyps}, ensure_ascii=False) + "\n")
        rows.append(row)

    print(f"### Transcript accuracy side by side ({a.n_zh} CASIA zh clips, {a.n_en}+3 English clips, seed {a.seed})\n")
    run_cer(a.lang, a.condition, a.n_zh, a.n_en, a.seed, a.systems, out)
    print(table(rows) + "\n")


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["offline", "live", "all", "cer"], nargs="?", default="all")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--lang", nargs="+", default=["zh", "en"], choices=["zh", "en"])
    ap.add_argument("--condition", nargs="+", default=["clean", "g711"], choices=["clean", "g711"])
    ap.add_argument("--n-zh", type=int, default=80, help="CASIA clips (seeded sample, both speakers, all emotions)")
    ap.add_argument("--n-en", type=int, default=30, help="RAVDESS clips (plus jfk and the two stereo channels)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--systems", nargs="+", help="only these systems (names as in bench/asr_accuracy.py)")
    ap.add_argument("--jsonl", type=Path, help="also append every row (with its hypotheses) to this file")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\ncommand: python bench/asr.py {' '.join(sys.argv[1:])}\n")
    if a.what == "cer":
        bench_cer(a)
        return
    if a.what in ("offline", "all"):
        print("### Offline real-time factor (int8, 2 threads, 30 s of English from multilingual.mp3)\n")
        print(table(bench_offline()) + "\n")
    if a.what in ("live", "all"):
        print(f"### Live: concurrent channels at real time ({a.seconds:.0f} s of composed 8 kHz calls each)\n")
        rows = bench_live(a.n, a.seconds)
        print(table(rows) + "\n")
        ok = [r["channels"] for r in rows if r["realtime"] and r["final_p95_s"] <= 2.5]
        print(f"largest N that stays real time with final p95 <= 2.5 s: {max(ok) if ok else 0}")


if __name__ == "__main__":
    main()
