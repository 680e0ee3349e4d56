"""Live capacity as a contact centre loads a node: N composed calls in real time, one agent desktop each.

    python bench/live.py                                   # starts its own server (dev mode, temp data dir)
    python bench/live.py --levels 2,4,8,12 --protocol mixed --env CALLTONE_ASR__WORKERS=2 --json out.json
    python bench/live.py --url ws://host:8000 --token T --server-pid PID
    python bench/live.py --levels 2 --job a.wav b.wav          # with a QA scoring job (POST /v1/jobs) during each level

Calls come from ``../shared/tools/make_calls.py --telephony`` (8 kHz stereo): Mandarin and English alternating,
customer on channel 0 or 1, a seed and recordings of their own (cached in ``--cache`` by corpus, language, channel
and seed); calls shorter than ``--seconds`` are skipped, the rest stop at their first pause from ``--seconds`` on.
Each streams in 20 ms frames at real time, starts spread over ``--stagger`` s, over ``WS /v1/calls/{id}/audio``
(PCM16) or ``WS /v1/twilio`` (Media Streams: µ-law, one ``media`` message per track per 20 ms, each track with
its own ``chunk`` and ``timestamp``); ``mixed`` balances both over language and channel.  One subscriber per
call reads ``WS /v1/calls/{id}/events`` (the agent page's feed).

On the subscriber: final latency = arrival minus the send time of the frame holding the final's ``end``;
emotion-update delay = the same for the update's ``t``; feed delay = a final's arrival minus its ``server_time``
(stored, then published: bus and websocket; one clock on one machine); partials and their median gap within an
utterance.  Finals delivered are set against the server's count (``call.ended.summary.final_segments``), a calm
reference (each call alone, unpaced, before the levels) and the script's utterances.  ASR lag from /metrics;
server CPU and memory (RSS, PSS) sum the server's process tree.  A close 1013 (or HTTP 503 at the upgrade) is a
refused call.  Stops after a level whose final p95 exceeds --max-p95 or that had errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from calltone.speech.audio import encode_pcm
from calltone.speech.g711 import ulaw_encode

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LANGS = ("zh", "en")
RATE = 8000  # the composed calls and Twilio
FRAME_S = 0.02
REFUSED = 1013  # the close code of a call the node will not take now


@dataclass(frozen=True)
class CallSpec:
    """One composed call as a level streams it."""

    name: str  # language-channel-seed/file: the cache key
    path: Path
    language: str
    customer_channel: int
    protocol: str  # native | twilio
    encoding: str  # what the server decodes: pcm_s16le (native) or mulaw (Twilio)
    seconds: float  # streamed: up to the first pause from --seconds on
    script_utterances: int  # ground-truth segments that end within them


@dataclass(frozen=True)
class Pacing:
    """How audio is sent: frames of ``frame_s``, each once it has been spoken (real time) or all at once."""

    frame_s: float
    real_time: bool


LIVE, CALM = Pacing(FRAME_S, True), Pacing(10 * FRAME_S, False)


@dataclass
class CallOutcome:
    name: str
    call_id: str
    protocol: str
    refused: bool = False
    error: str = ""
    final_latency_s: list[float] = field(default_factory=list)
    emotion_delay_s: list[float] = field(default_factory=list)
    feed_delay_s: list[float] = field(default_factory=list)  # a final's arrival minus its server_time (stored)
    partials: int = 0
    partial_gaps_s: list[float] = field(default_factory=list)
    server_finals: int | None = None  # call.ended summary.final_segments
    feed_reconnects: int = 0


@dataclass
class Level:
    calls: int
    protocol: str
    finals: int  # delivered to the subscribers
    server_finals: int
    reference_finals: int | None  # the same calls alone (refused calls left out)
    script_utterances: int
    final_p50_s: float
    final_p95_s: float
    final_max_s: float
    emotion_p50_s: float
    emotion_p95_s: float
    feed_p95_s: float
    partials: int
    partial_gap_p50_s: float
    asr_lag_max_s: float
    asr_busy: float  # decoder-seconds spent decoding per second (calltone_asr_busy_seconds): how many decoders were busy
    server_cpu_cores: float | None
    client_cpu_cores: float
    rss_mib: float | None
    pss_mib: float | None
    refused: int
    errors: int
    first_error: str
    job: dict | None
    outcomes: list[CallOutcome]


class Refused(Exception):
    pass


# --------------------------------------------------------------------------- calls


def compose(corpus: Path, cache: Path, lang: str, cc: int, seed: int) -> list[Path]:
    out = cache / hashlib.sha1(str(corpus.resolve()).encode()).hexdigest()[:8] / f"{lang}-ch{cc}-seed{seed}"
    if not (out / "done").exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_calls.py"), str(corpus), str(out), "--calls", "4",
                        "--seed", str(seed), "--telephony", "--lang", lang, "--customer-channel", str(cc)],
                       check=True, stdout=subprocess.DEVNULL)
        (out / "done").touch()
    return sorted(out.glob("call*.wav"))


def pause_after(segments: list[dict], seconds: float, duration: float, hangover: float = 0.8) -> float:
    """The first moment from ``seconds`` on that is ``hangover`` past a segment's end and inside no segment or its
    hangover (else the whole call): the stream stops with every utterance closed, no final depends on the cut."""
    spans = [(s["start"], s["end"] + hangover) for s in segments]
    return round(min((b for _, b in spans if b >= seconds and not any(a0 < b < b0 for a0, b0 in spans)),
                     default=duration), 3)


def pick_calls(args: argparse.Namespace, n: int) -> list[CallSpec]:
    """Call k: language k % 2, customer channel (k // 2) % 2, the (k // 4)-th long-enough call of that group."""
    groups: dict[tuple[str, int], list[Path]] = defaultdict(list)
    batches: dict[tuple[str, int], int] = defaultdict(int)
    specs = []
    for k in range(n):
        lang, cc = LANGS[k % 2], (k // 2) % 2
        while len(groups[lang, cc]) <= k // 4:
            seed = args.seed + 1000 * batches[lang, cc] + 10 * LANGS.index(lang) + cc
            batches[lang, cc] += 1
            groups[lang, cc] += [p for p in compose(args.corpus, args.cache, lang, cc, seed)
                                 if json.loads(p.with_suffix(".json").read_text())["duration_s"] >= args.seconds]
        path = groups[lang, cc][k // 4]
        truth = json.loads(path.with_suffix(".json").read_text())
        proto = args.protocol if args.protocol != "mixed" else ("native", "twilio")[(k + k // 2) % 2]
        cut = pause_after(truth["segments"], args.seconds, truth["duration_s"])
        specs.append(CallSpec(f"{path.parent.name}/{path.stem}", path, lang, cc, proto,
                              "mulaw" if proto == "twilio" else "pcm_s16le", cut,
                              sum(s["end"] <= cut for s in truth["segments"])))
    return specs


def encode(spec: CallSpec, pacing: Pacing) -> list[list[str | bytes]]:
    """The messages of each frame: one binary frame (native) or inbound + outbound ``media`` (Twilio)."""
    audio, rate = sf.read(spec.path, dtype="float32", always_2d=True)
    assert rate == RATE, f"{spec.path}: {rate} Hz"
    audio, frame = audio[: int(spec.seconds * RATE)], int(pacing.frame_s * RATE)
    starts = range(0, len(audio), frame)
    if spec.protocol == "native":
        return [[encode_pcm(audio[i : i + frame], spec.encoding)] for i in starts]
    sid, cols = "MZ" + uuid.uuid4().hex, {"inbound": spec.customer_channel, "outbound": 1 - spec.customer_channel}
    return [[json.dumps({"event": "media", "sequenceNumber": str(2 + 2 * n + j), "streamSid": sid,
                         "media": {"track": track, "chunk": str(n + 1), "timestamp": str(i * 1000 // RATE),
                                   "payload": base64.b64encode(ulaw_encode(audio[i : i + frame, col])).decode()}})
             for j, (track, col) in enumerate(cols.items())] for n, i in enumerate(starts)]


# --------------------------------------------------------------------------- one call: producer and agent desktop


@dataclass
class Wire:
    """One call on the wire: what to send, when each frame went out, what its desktop received."""

    url: str
    token: str | None
    spec: CallSpec
    call_id: str
    frames: list[list[str | bytes]]
    pacing: Pacing
    sent: list[float] = field(default_factory=list)
    got: list[tuple[float, dict]] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def send_frames(self, ws) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, msgs in enumerate(self.frames):
            if self.pacing.real_time and (delay := t0 + (i + 1) * self.pacing.frame_s - loop.time()) > 0:
                await asyncio.sleep(delay)
            for m in msgs:
                await ws.send(m)
            self.sent.append(time.time())  # the server's clock too (server_time), on one machine


async def native(w: Wire) -> None:
    roles = ["customer", "agent"] if w.spec.customer_channel == 0 else ["agent", "customer"]
    async with connect(f"{w.url}/v1/calls/{w.call_id}/audio", additional_headers=w.headers, max_size=None,
                       open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": w.spec.encoding, "channels": 2,
                                  "channel_roles": roles, "language": w.spec.language, "agent_id": f"agent-{w.call_id}",
                                  "events": False, "partials": True}))
        first = json.loads(await ws.recv())
        if first.get("type") != "started":
            await ws.wait_closed()
            if ws.close_code == REFUSED:
                raise Refused(first.get("code"))
            raise RuntimeError(f"start refused: {first.get('code')} (close {ws.close_code})")
        w.opened.set()
        await w.send_frames(ws)
        await ws.send(json.dumps({"type": "stop"}))
        await ws.wait_closed()


async def twilio(w: Wire) -> None:
    """Media Streams as Twilio sends them (<Start><Stream track="both_tracks">): no header, the token a parameter."""
    sid = json.loads(w.frames[0][0])["streamSid"]
    params = {"call_id": w.call_id, "language": w.spec.language, "agent_id": f"agent-{w.call_id}"}
    call = {"accountSid": "AC" + "0" * 32, "callSid": "CA" + uuid.uuid4().hex}
    start = {"event": "start", "sequenceNumber": "1", "streamSid": sid,
             "start": {**call, "streamSid": sid, "tracks": ["inbound", "outbound"],
                       "customParameters": params | ({"token": w.token} if w.token else {}),
                       "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1}}}
    async with connect(f"{w.url}/v1/twilio", max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps(start))
        w.opened.set()
        await w.send_frames(ws)
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": str(2 + 2 * len(w.frames)), "streamSid": sid,
                                  "stop": call}))
        await ws.wait_closed()


async def desktop(w: Wire) -> int:
    """The agent page's feed until call.ended; reconnects with ?after= (4404 while a Twilio call opens, 4408)."""
    await w.opened.wait()
    after, reconnects = 0, 0
    while True:
        try:
            async with connect(f"{w.url}/v1/calls/{w.call_id}/events?after={after}", additional_headers=w.headers,
                               max_size=None, open_timeout=30) as ws:
                async for raw in ws:
                    ev = json.loads(raw)
                    if ev.get("type") == "error":
                        continue  # the close that follows says what to do
                    w.got.append((time.time(), ev))
                    after = ev.get("seq") or after
                    if ev["type"] == "call.ended":
                        return reconnects
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            if code not in (4404, 4408):
                raise
            reconnects += code == 4408
            await asyncio.sleep(0.1)


def measure(w: Wire, out: CallOutcome) -> None:
    def sent_at(t: float) -> float:  # the frame holding call time t
        return w.sent[min(len(w.sent) - 1, max(0, math.ceil(t / w.pacing.frame_s - 1e-6) - 1))]

    utterances: dict[tuple, list[float]] = defaultdict(list)
    for arrived, ev in w.got:
        if ev["type"] == "transcript.final":
            out.final_latency_s.append(arrived - sent_at(ev["end"]))
            out.feed_delay_s.append(arrived - ev["server_time"])
        elif ev["type"] == "emotion.update":
            out.emotion_delay_s.append(arrived - sent_at(ev["t"]))
        elif ev["type"] == "transcript.partial":
            out.partials += 1
            utterances[ev["channel"], ev["start"]].append(arrived)
        elif ev["type"] == "call.ended":
            out.server_finals = ev["summary"].get("final_segments")
    out.partial_gaps_s = [b - a for times in utterances.values() for a, b in zip(times, times[1:])]


async def run_call(w: Wire, delay: float) -> CallOutcome:
    await asyncio.sleep(delay)
    out = CallOutcome(w.spec.name, w.call_id, w.spec.protocol)
    feed = asyncio.ensure_future(desktop(w))
    try:
        await (native(w) if w.spec.protocol == "native" else twilio(w))
        out.feed_reconnects = await asyncio.wait_for(feed, 120)
    except (Refused, InvalidStatus, ConnectionClosed) as e:
        rcvd = getattr(e, "rcvd", None)
        out.refused = isinstance(e, Refused) or (rcvd is not None and rcvd.code == REFUSED) or (
            isinstance(e, InvalidStatus) and e.response.status_code == 503)
        out.error = "" if out.refused else repr(e)[:160]
    except Exception as e:  # noqa: BLE001 - counted and shown, the level goes on
        out.error = repr(e)[:160]
    finally:
        feed.cancel()
    if w.sent:
        measure(w, out)
    return out


# --------------------------------------------------------------------------- the server: metrics, CPU, memory


def scrape(http: str, token: str | None, name: str) -> float:
    req = urllib.request.Request(f"{http}/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        text = urllib.request.urlopen(req, timeout=5).read().decode()
    except OSError:
        return float("nan")
    m = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children[int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(d.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(p := todo.pop())
        todo += children.get(p, [])
    return tree


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system of the tree, its reaped children included (cutime, cstime)
    rss_mib: float
    pss_mib: float  # counts the pages the processes share once


def tree_usage(pid: int) -> Usage:
    ticks, kib = 0, np.zeros(2)
    for p in process_tree(pid):
        with contextlib.suppress(OSError, AttributeError):
            ticks += sum(int(x) for x in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:15])
            kib += [int(re.search(rf"^{key}:\s+(\d+)", Path(f"/proc/{p}/{f}").read_text(), re.M).group(1))
                    for key, f in (("VmRSS", "status"), ("Pss", "smaps_rollup"))]
    return Usage(ticks / os.sysconf("SC_CLK_TCK"), kib[0] / 1024, kib[1] / 1024)


@dataclass
class Sampler:
    """ASR lag (/metrics) and the server tree's memory, once a second."""

    http: str
    token: str | None
    pid: int | None
    lag_max: float = 0.0
    rss_max: float = 0.0
    pss_max: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            lag = await asyncio.to_thread(scrape, self.http, self.token, "calltone_asr_lag_seconds")
            self.lag_max = max(self.lag_max, lag) if not math.isnan(lag) else self.lag_max
            if self.pid:
                u = await asyncio.to_thread(tree_usage, self.pid)
                self.rss_max, self.pss_max = max(self.rss_max, u.rss_mib), max(self.pss_max, u.pss_mib)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def http_json(http: str, token: str | None, path: str, body: bytes | None = None, ctype: str = "") -> dict:
    req = urllib.request.Request(f"{http}{path}", data=body, method="POST" if body else "GET",
                                 headers=({"Authorization": f"Bearer {token}"} if token else {}) | (
                                     {"Content-Type": ctype} if ctype else {}))
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


async def start_job(http: str, token: str | None, files: list[Path]) -> str:
    """Upload recordings as one scoring job (multipart); return once it is decoding."""
    b = uuid.uuid4().hex
    body = b"".join(f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
                    f"Content-Type: audio/wav\r\n\r\n".encode() + f.read_bytes() + b"\r\n" for f in files)
    job = (await asyncio.to_thread(http_json, http, token, "/v1/jobs", body + f"--{b}--\r\n".encode(),
                                   f"multipart/form-data; boundary={b}"))["job_id"]
    while (await asyncio.to_thread(http_json, http, token, f"/v1/jobs/{job}"))["progress"]["current_fraction"] <= 0:
        await asyncio.sleep(0.2)
    return job


# --------------------------------------------------------------------------- levels


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def calm_reference(args: argparse.Namespace, url: str, specs: list[CallSpec]) -> dict[str, int]:
    """Finals of each call streamed alone and unpaced, natively in the encoding the server decodes for it
    (µ-law for a Twilio call, so the VAD hears the same samples): what every level must deliver for it."""
    ref: dict[str, int] = {}
    for spec in specs:
        native_spec = replace(spec, protocol="native")
        for attempt in range(5):  # a node still busy with the last call may refuse for ASR lag a moment
            wire = Wire(url, args.token, native_spec, f"ref-{uuid.uuid4().hex[:12]}", encode(native_spec, CALM), CALM)
            if not (out := await run_call(wire, 2.0 * attempt)).refused:
                break
        if out.error or out.refused:
            raise SystemExit(f"calm reference of {spec.name} failed: {out.error or 'refused'}")
        ref[spec.name] = len(out.final_latency_s)
        print(f"# reference {spec.name} ({spec.encoding}): {ref[spec.name]} finals", file=sys.stderr, flush=True)
    return ref


async def run_level(args: argparse.Namespace, url: str, specs: list[CallSpec], pid: int | None,
                    reference: dict[str, int]) -> Level:
    http, n, tag = "http" + url[2:], len(specs), f"live-{uuid.uuid4().hex[:8]}-{len(specs)}"
    wires = [Wire(url, args.token, s, f"{tag}-{k}", encode(s, LIVE), LIVE) for k, s in enumerate(specs)]
    job = await start_job(http, args.token, args.job) if args.job else None
    stop, sampler = asyncio.Event(), Sampler(http, args.token, pid)
    poll = asyncio.ensure_future(sampler.run(stop))
    busy0 = await asyncio.to_thread(scrape, http, args.token, "calltone_asr_busy_seconds")
    cpu0, own0, t0 = (tree_usage(pid).cpu_s if pid else 0.0), sum(os.times()[:2]), time.monotonic()
    outcomes = await asyncio.gather(*(run_call(w, k * args.stagger / n) for k, w in enumerate(wires)))
    wall = time.monotonic() - t0
    busy = (await asyncio.to_thread(scrape, http, args.token, "calltone_asr_busy_seconds") - busy0) / wall
    server_cpu = (tree_usage(pid).cpu_s - cpu0) / wall if pid else None
    client_cpu = (sum(os.times()[:2]) - own0) / wall
    stop.set()
    await poll
    job_state = None
    if job:
        st = await asyncio.to_thread(http_json, http, args.token, f"/v1/jobs/{job}")
        job_state = {"status": st["status"], **{k: st["progress"][k] for k in ("files_done", "files_total")}}
    return summarise(args, specs, list(outcomes), reference, sampler, (busy, server_cpu, client_cpu), job_state)


def summarise(args: argparse.Namespace, specs: list[CallSpec], outs: list[CallOutcome], reference: dict[str, int],
              sampler: Sampler, use: tuple[float, float | None, float], job: dict | None) -> Level:
    asr_busy, server_cpu, client_cpu = use
    lat = [x for o in outs for x in o.final_latency_s]
    emo = [x for o in outs for x in o.emotion_delay_s]
    gaps = [x for o in outs for x in o.partial_gaps_s]
    feed = [x for o in outs for x in o.feed_delay_s]
    errors = [o.error for o in outs if o.error]
    ran = [s for s, o in zip(specs, outs) if not o.refused]
    return Level(calls=len(specs), protocol=args.protocol, finals=len(lat),
                 server_finals=sum(o.server_finals or 0 for o in outs),
                 reference_finals=sum(reference[s.name] for s in ran) if reference else None,
                 script_utterances=sum(s.script_utterances for s in ran),
                 final_p50_s=pct(lat, 50), final_p95_s=pct(lat, 95), final_max_s=max(lat, default=float("nan")),
                 emotion_p50_s=pct(emo, 50), emotion_p95_s=pct(emo, 95), feed_p95_s=pct(feed, 95),
                 partials=sum(o.partials for o in outs), partial_gap_p50_s=pct(gaps, 50),
                 asr_lag_max_s=sampler.lag_max, asr_busy=asr_busy, server_cpu_cores=server_cpu, client_cpu_cores=client_cpu,
                 rss_mib=sampler.rss_max if sampler.pid else None, pss_mib=sampler.pss_max if sampler.pid else None,
                 refused=sum(o.refused for o in outs), errors=len(errors), first_error=errors[0] if errors else "",
                 job=job, outcomes=outs)


# --------------------------------------------------------------------------- server, report, main


def start_server(port: int, env_pairs: list[str]) -> tuple[subprocess.Popen, Path]:
    """``calltone serve`` in dev mode in a new data dir (its log: ``server.log`` there), once /readyz is 200."""
    data = Path(tempfile.mkdtemp(prefix="calltone-live-"))
    env = {k: v for k, v in os.environ.items() if k != "CALLTONE_SERVER__TOKENS"}
    env |= {"CALLTONE_SERVER__DATA_DIR": str(data)} | dict(kv.split("=", 1) for kv in env_pairs)
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "calltone.cli", "serve", "--port", str(port)], env=env, cwd=data,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return proc, data
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not become ready; see {data / 'server.log'}")


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def f2(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


COLUMNS = ["calls", "protocol", "finals", "final p50 (s)", "final p95 (s)", "final max (s)",
           "emotion update p50 / p95 (s)", "feed delay p95 (s)", "partials / median gap (s)", "ASR lag max (s)",
           "ASR decoders busy", "server CPU (cores)", "bench CPU (cores)", "server RSS / PSS peak (MiB)", "refused (1013)", "errors"]


def row(r: Level) -> list[str]:
    job = [f"{r.job['files_done']}/{r.job['files_total']} files, {r.job['status']}"] if r.job else []
    return [str(r.calls), r.protocol, f"{r.finals} / {r.server_finals} / {f2(r.reference_finals, 'd')} / "
            f"{r.script_utterances}", f2(r.final_p50_s), f2(r.final_p95_s), f2(r.final_max_s),
            f"{f2(r.emotion_p50_s)} / {f2(r.emotion_p95_s)}", f2(r.feed_p95_s),
            f"{r.partials} / {f2(r.partial_gap_p50_s)}", f2(r.asr_lag_max_s), f2(r.asr_busy),
            f2(r.server_cpu_cores),
            f2(r.client_cpu_cores), f"{f2(r.rss_mib, '.0f')} / {f2(r.pss_mib, '.0f')}", str(r.refused),
            str(r.errors), *job]


def table(args: argparse.Namespace, rows: list[Level]) -> str:
    cols = COLUMNS + (["scoring job"] if args.job else [])
    return "\n".join([
        f"Live capacity (bench/live.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}",
        f"Command: `{shlex.join(['python', *sys.argv])}`",
        f"Composed 8 kHz calls (zh/en alternating, customer on channel 0/1) to their first pause after "
        f"{args.seconds:g} s, starts over {args.stagger:g} s; native: PCM16, twilio: µ-law; 20 ms frames in real "
        f"time; one event-feed subscriber per call. Finals: delivered / server's count / calm reference / script "
        f"utterances.", "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c in ("protocol", "scoring job") else "---:" for c in cols) + "|",
        *("| " + " | ".join(row(r)) + " |" for r in rows)])


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="ws://host:port of a running server (default: start one)")
    ap.add_argument("--token", help="token with the ingest, read_calls and metrics roles (admin) for --url")
    ap.add_argument("--server-pid", type=int, help="server process id with --url: CPU and memory of its process tree")
    ap.add_argument("--port", type=int, default=8765, help="port of the server this starts")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VAL", help="a setting of the server this starts")
    ap.add_argument("--levels", default="2,4,8,12", help="concurrent calls per level")
    ap.add_argument("--protocol", choices=["native", "twilio", "mixed"], default="native")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of each call (shorter calls are skipped)")
    ap.add_argument("--stagger", type=float, default=8.0, help="call starts spread over this many seconds")
    ap.add_argument("--max-p95", type=float, default=5.0, help="stop after a level with final p95 above this (s)")
    ap.add_argument("--no-reference", action="store_true", help="skip the calm reference (each call alone, first)")
    ap.add_argument("--corpus", type=Path, default=SHARED / "data" / "emotion-speech", help="make_calls.py corpus")
    ap.add_argument("--seed", type=int, default=1300)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "calltone-live-calls")
    ap.add_argument("--job", nargs="+", type=Path, help="recordings to score as a POST /v1/jobs job during each level")
    ap.add_argument("--json", type=Path, help="write the raw figures (every call's latencies) here")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    specs = pick_calls(args, max(levels))
    proc, data = start_server(args.port, args.env) if not args.url else (None, None)
    url = re.sub(r"^http", "ws", args.url.rstrip("/")) if args.url else f"ws://127.0.0.1:{args.port}"
    pid = proc.pid if proc else args.server_pid
    if data:
        print(f"# server pid {pid}, data and log in {data}", file=sys.stderr, flush=True)
    rows: list[Level] = []
    reference: dict[str, int] = {}
    try:
        reference = {} if args.no_reference else asyncio.run(calm_reference(args, url, specs))
        for n in levels:
            rows.append(r := asyncio.run(run_level(args, url, specs[:n], pid, reference)))
            print(f"# {n} calls: finals {r.finals}/{r.server_finals}/{r.reference_finals} p50 {f2(r.final_p50_s)} s "
                  f"p95 {f2(r.final_p95_s)} s CPU {f2(r.server_cpu_cores)} refused {r.refused} errors {r.errors} "
                  f"{r.first_error}", file=sys.stderr, flush=True)
            if r.errors or r.final_p95_s > args.max_p95:
                break
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(table(args, rows))
    if args.json:
        meta = {"machine": machine(), "argv": sys.argv, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "env": args.env, "calls": [asdict(s) for s in specs]}
        args.json.write_text(json.dumps({"meta": meta, "reference": reference, "levels": [asdict(r) for r in rows]},
                                        indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
