"""Live-service load test: N concurrent real-time calls against one server.

    python bench/live.py                       # starts its own server (dev mode, temp data dir)
    python bench/live.py --url ws://host:8000 --token T --server-pid PID
    python bench/live.py --levels 1,2,4 --seconds 30
    python bench/live.py --levels 2 --job calls/*.wav   # the same with a QA scoring job running (POST /v1/jobs)

Each call streams a sample call (demo_en / demo_zh alternately, 8 kHz µ-law, 20 ms
frames, paced at real time) through ``WS /v1/calls/{id}/audio`` and receives its
events on the same socket.  Final-transcript latency = time the final arrived minus
the time the client sent the audio at the utterance's end.  ASR lag is polled from
/metrics; CPU is the server process's user+system time over the run.  Stops at
the first level whose p95 latency exceeds --max-p95 (the service "breaks") or the
last level.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "samples" / "demo_en.wav", ROOT / "samples" / "demo_zh.wav"]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(http: str, token: str | None, name: str) -> float | None:
    req = urllib.request.Request(f"{http}/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        text = urllib.request.urlopen(req, timeout=5).read().decode()
    except Exception:
        return None
    m = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


async def one_call(url: str, token: str | None, call_id: str, path: Path, seconds: float, lat: list[float]) -> int:
    from calltone.server.replay import read_audio, stream_call

    audio, rate = read_audio(path)
    audio = audio[: int(seconds * rate)]
    sent: list[tuple[float, float]] = []

    def on_send(end_s: float, mono: float) -> None:
        sent.append((end_s, mono))

    finals = 0

    def on_event(ev: dict) -> None:
        nonlocal finals
        if ev.get("type") == "transcript.final":
            finals += 1
            i = bisect.bisect_left(sent, (ev["end"] - 1e-6, 0.0))
            if i < len(sent):
                lat.append(time.monotonic() - sent[i][1])

    lang = "zh" if "zh" in path.stem else "en"
    await stream_call(url, call_id, audio, rate, speed=1.0, token=token, language=lang, on_event=on_event, on_send=on_send,
                      frame_ms=20)
    return finals


def post_job(http: str, token: str | None, files: list[Path]) -> str:
    """Upload recordings as a scoring job (multipart); returns the job id."""
    import json
    import uuid

    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
                    f"Content-Type: audio/wav\r\n\r\n".encode() + f.read_bytes() + b"\r\n" for f in files)
    req = urllib.request.Request(f"{http}/v1/jobs", data=body + f"--{boundary}--\r\n".encode(), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["job_id"]


def job_status(http: str, token: str | None, job_id: str) -> dict:
    import json

    req = urllib.request.Request(f"{http}/v1/jobs/{job_id}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def level(url: str, http: str, token: str | None, n: int, seconds: float, pid: int | None,
                job_files: list[Path] | None = None) -> dict:
    lat: list[float] = []
    lags: list[float] = []
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            v = await asyncio.to_thread(scrape, http, token, "calltone_asr_lag_seconds")
            if v is not None:
                lags.append(v)
            await asyncio.sleep(1.0)

    job_id = await asyncio.to_thread(post_job, http, token, job_files) if job_files else None
    if job_id:  # let the job start decoding before the calls do
        while (await asyncio.to_thread(job_status, http, token, job_id))["progress"]["current_fraction"] <= 0:
            await asyncio.sleep(0.2)
    cpu0, t0 = (proc_cpu_s(pid) if pid else None), time.monotonic()
    poller = asyncio.ensure_future(poll())
    tag = f"bench-{int(time.time())}-{n}"
    results = await asyncio.gather(*(one_call(url, token, f"{tag}-{i}", FILES[i % len(FILES)], seconds, lat) for i in range(n)),
                                   return_exceptions=True)
    stop.set()
    await poller
    wall = time.monotonic() - t0
    job = None
    if job_id:
        st = await asyncio.to_thread(job_status, http, token, job_id)
        p = st["progress"]
        job = {"status": st["status"], "files_done": p["files_done"], "files_total": p["files_total"],
               "audio_s_done": p["audio_s_done"]}
    errors = [r for r in results if isinstance(r, BaseException)]
    cpu = (proc_cpu_s(pid) - cpu0) / wall * 100 if pid else None
    arr = np.array(lat) if lat else np.array([np.nan])
    return {"n": n, "finals": len(lat), "p50": float(np.nanpercentile(arr, 50)), "p95": float(np.nanpercentile(arr, 95)),
            "lag_max": max(lags, default=float("nan")), "lag_mean": float(np.mean(lags)) if lags else float("nan"),
            "cpu": cpu, "errors": len(errors), "error": repr(errors[0])[:120] if errors else "", "job": job}


def start_server(port: int, data_dir: Path | None = None) -> subprocess.Popen:
    """`calltone serve` on ``port`` (a new temporary data dir unless given), once /readyz answers 200."""
    data = data_dir or tempfile.mkdtemp(prefix="calltone-bench-")
    env = dict(os.environ, CALLTONE_SERVER__DATA_DIR=str(data))
    proc = subprocess.Popen([sys.executable, "-m", "calltone.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return proc
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become ready")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="ws://host:port of a running server (default: start one)")
    ap.add_argument("--token", help="ingest+metrics token (admin) for --url")
    ap.add_argument("--server-pid", type=int, help="server process id, for CPU with --url")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of each sample call to stream")
    ap.add_argument("--max-p95", type=float, default=5.0, help="stop after a level with p95 latency above this")
    ap.add_argument("--job", nargs="+", type=Path, help="recordings to score as a POST /v1/jobs job during each level")
    args = ap.parse_args()
    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.server_pid
    else:
        proc = start_server(args.port)
        url, pid = f"ws://127.0.0.1:{args.port}", proc.pid
    http = "http" + url[2:]
    rows = []
    try:
        for n in [int(x) for x in args.levels.split(",")]:
            r = asyncio.run(level(url, http, args.token, n, args.seconds, pid, args.job))
            rows.append(r)
            print(f"# {n} calls: p50 {r['p50']:.2f}s p95 {r['p95']:.2f}s lag max {r['lag_max']:.2f}s "
                  f"cpu {r['cpu'] or 0:.0f}% errors {r['errors']} {r['error']} job {r['job']}", file=sys.stderr, flush=True)
            if r["errors"] or r["p95"] > args.max_p95:
                break
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(f"\nLive service, {args.seconds:g} s of each sample call per client, 8 kHz µ-law, 20 ms frames, real time "
          f"({os.cpu_count()} cores)\n")
    job_col = " scoring job during the level |" if args.job else ""
    print("| concurrent calls | finals | final latency p50 (s) | p95 (s) | ASR lag mean / max (s) | server CPU (%) | errors |" + job_col)
    print("|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if args.job else ""))
    for r in rows:
        cpu = f"{r['cpu']:.0f}" if r["cpu"] is not None else "n/a"
        j = r.get("job")
        job = (f" {j['files_done']}/{j['files_total']} files done, {j['status']} |" if j else "") if args.job else ""
        print(f"| {r['n']} | {r['finals']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['lag_mean']:.2f} / {r['lag_max']:.2f} "
              f"| {cpu} | {r['errors']} |" + job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
