"""Soak benchmark: a few real-time calls for a long time against one ``calltone serve`` process.

    python bench/soak.py                      # 4 calls, 30 minutes
    python bench/soak.py --calls 4 --minutes 2 --json soak.json

Composes telephony calls (8 kHz stereo, Mandarin and English) with
``../shared/tools/make_calls.py``, starts ``calltone serve`` (dev mode, a temporary data dir)
and streams ``--calls`` calls at once, each looping over the composed calls at real time
(20 ms µ-law frames) with one event-feed subscriber per call.  Every ``--sample-s`` seconds
it samples the server process: resident memory, open file descriptors (``/proc/PID/fd``),
threads and CPU.  Prints a table and a JSON summary: RSS at start / end / max and its growth
per hour (least-squares slope after a warm-up), descriptors and threads at start / end, finals delivered
to the subscribers, final latency p50 / p95 (subscriber receipt minus the moment the audio
at the utterance's end was sent).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from live import proc_cpu_s, start_server  # bench/live.py

from calltone.server.replay import read_audio, stream_call

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MAKE_CALLS = SHARED / "tools" / "make_calls.py"
CORPUS = SHARED / "data" / "emotion-speech"


@dataclass
class Totals:
    finals: int = 0
    calls: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    fds: int
    threads: int
    cpu_pct: float
    finals: int


def compose_calls(out: Path, per_language: int, seed: int) -> list[tuple[Path, str]]:
    """``per_language`` composed calls per language (8 kHz telephony stereo), as (file, language)."""
    calls: list[tuple[Path, str]] = []
    for i, lang in enumerate(("zh", "en")):
        folder = out / lang
        subprocess.run([sys.executable, str(MAKE_CALLS), str(CORPUS), str(folder), "--calls", str(per_language),
                        "--lang", lang, "--telephony", "--seed", str(seed + i)], check=True, capture_output=True)
        calls += [(wav, lang) for wav in sorted(folder.glob("*.wav"))]
    return calls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample(pid: int, t0: float, cpu0: tuple[float, float], totals: Totals) -> Sample:
    """The server process now; ``cpu0`` is (wall, cpu seconds) at the previous sample."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    now, cpu = time.monotonic(), proc_cpu_s(pid)
    return Sample(t_s=now - t0, rss_mib=int(status["VmRSS"].split()[0]) / 1024, fds=len(os.listdir(f"/proc/{pid}/fd")),
                  threads=int(status["Threads"]), cpu_pct=100 * (cpu - cpu0[1]) / max(1e-9, now - cpu0[0]),
                  finals=totals.finals)


async def subscribe(url: str, call_id: str, sent: list[tuple[float, float]], totals: Totals) -> None:
    """The call's event feed, from its first event to call.ended: finals and their latency."""
    async with connect(f"{url}/v1/calls/{call_id}/events", max_size=None, open_timeout=30) as ws:
        try:
            async for raw in ws:
                ev = json.loads(raw)
                if ev.get("type") == "transcript.final":
                    totals.finals += 1
                    i = bisect.bisect_left(sent, (ev["end"] - 1e-6, 0.0))
                    if i < len(sent):
                        totals.latencies.append(time.monotonic() - sent[i][1])
                elif ev.get("type") == "error":
                    totals.errors.append(f"{call_id}: feed {ev.get('code')}")
        except ConnectionClosed:
            pass


async def one_call(url: str, call_id: str, path: Path, language: str, totals: Totals) -> None:
    audio, rate = read_audio(path)
    sent: list[tuple[float, float]] = []
    first_frame = asyncio.Event()

    def on_send(end_s: float, mono: float) -> None:
        sent.append((end_s, mono))
        first_frame.set()

    async def feed() -> None:
        await first_frame.wait()  # the call exists once its first frame went out after "started"
        await subscribe(url, call_id, sent, totals)

    subscriber = asyncio.ensure_future(feed())
    try:
        await stream_call(url, call_id, audio, rate, speed=1.0, language=language, on_send=on_send, frame_ms=20)
        await asyncio.wait_for(subscriber, 60)
        totals.calls += 1
    finally:
        subscriber.cancel()


async def caller(url: str, n: int, files: list[tuple[Path, str]], totals: Totals) -> None:
    """Caller ``n`` streams the composed calls one after another, round and round."""
    for k in range(10**9):
        path, language = files[(n + k) % len(files)]
        try:
            await one_call(url, f"soak-{n}-{k}", path, language, totals)
        except (OSError, ConnectionClosed, asyncio.TimeoutError, RuntimeError) as e:
            totals.errors.append(f"soak-{n}-{k}: {type(e).__name__}: {e}")
            await asyncio.sleep(1)


async def soak(url: str, pid: int, files: list[tuple[Path, str]], calls: int, minutes: float,
               every_s: float) -> tuple[list[Sample], Totals]:
    totals = Totals()
    t0 = time.monotonic()
    prev = (t0, proc_cpu_s(pid))
    samples = [sample(pid, t0, prev, totals)]
    tasks = [asyncio.ensure_future(caller(url, n, files, totals)) for n in range(calls)]
    try:
        while time.monotonic() - t0 < minutes * 60:
            await asyncio.sleep(min(every_s, max(0.0, t0 + minutes * 60 - time.monotonic())))
            samples.append(sample(pid, t0, prev, totals))
            prev = (time.monotonic(), proc_cpu_s(pid))
            s = samples[-1]
            print(f"{s.t_s / 60:6.1f} min  rss {s.rss_mib:7.1f} MiB  fds {s.fds:4d}  threads {s.threads:3d}  "
                  f"cpu {s.cpu_pct:5.1f} %  finals {s.finals}", file=sys.stderr, flush=True)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples, totals


def summary(samples: list[Sample], totals: Totals, calls: int, minutes: float, warmup_min: float) -> dict:
    rss = np.array([s.rss_mib for s in samples])
    steady = [s for s in samples if s.t_s >= warmup_min * 60]  # the model and the pools are warm by then
    slope = float(np.polyfit([s.t_s / 3600 for s in steady], [s.rss_mib for s in steady], 1)[0]) if len(steady) > 2 else 0.0
    lat = np.array(totals.latencies) if totals.latencies else np.zeros(1)
    return {"calls": calls, "minutes": minutes, "cores": os.cpu_count(),
            "rss_mib": {"start": round(rss[0], 1), "after_warmup": round(steady[0].rss_mib, 1) if steady else None,
                        "end": round(rss[-1], 1), "max": round(float(rss.max()), 1),
                        "growth_per_hour": round(slope, 1), "warmup_min": warmup_min},
            "fds": {"start": samples[0].fds, "end": samples[-1].fds, "max": max(s.fds for s in samples)},
            "threads": {"start": samples[0].threads, "end": samples[-1].threads},
            "cpu_pct_mean": round(float(np.mean([s.cpu_pct for s in samples[1:]] or [0.0])), 1),
            "calls_completed": totals.calls, "finals_delivered": totals.finals,
            "final_latency_s": {"p50": round(float(np.percentile(lat, 50)), 2),
                                "p95": round(float(np.percentile(lat, 95)), 2)},
            "errors": len(totals.errors), "first_errors": totals.errors[:5]}


def table(samples: list[Sample]) -> str:
    rows = ["| min | RSS (MiB) | fds | threads | CPU (%) | finals |", "|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {s.t_s / 60:.1f} | {s.rss_mib:.1f} | {s.fds} | {s.threads} | {s.cpu_pct:.0f} | {s.finals} |"
             for s in samples]
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=4, help="concurrent calls")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples of the server process")
    ap.add_argument("--per-language", type=int, default=4, help="composed calls per language to loop over")
    ap.add_argument("--warmup-min", type=float, help="minutes left out of the RSS growth fit (default: a quarter "
                                                     "of the run, at most 5)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    if not MAKE_CALLS.is_file():
        raise SystemExit(f"{MAKE_CALLS} not found: the shared data folder must sit beside the repository")
    with tempfile.TemporaryDirectory(prefix="calltone-soak-") as tmp:
        files = compose_calls(Path(tmp), args.per_language, args.seed)
        port = free_port()
        proc = start_server(port)
        try:
            samples, totals = asyncio.run(soak(f"ws://127.0.0.1:{port}", proc.pid, files, args.calls, args.minutes,
                                               args.sample_s))
        finally:
            proc.terminate()
            proc.wait(60)
    warmup = args.warmup_min if args.warmup_min is not None else min(5.0, args.minutes / 4)
    result = summary(samples, totals, args.calls, args.minutes, warmup)
    print(f"\nSoak: {args.calls} real-time calls for {args.minutes:g} min ({os.cpu_count()} cores)\n")
    print(table(samples))
    print("\n" + json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
