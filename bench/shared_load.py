"""Load on the shared parts: many simulated concurrent calls through a real Redis and a real PostgreSQL.

    python bench/shared_load.py measure                      # real calls -> bench/shared_load_profile.json
    python bench/shared_load.py run --calls 1000 --seconds 60
    python bench/shared_load.py run --redis-url redis://127.0.0.1:6379/0 --database-url postgresql://...

``measure`` composes 2 English and 2 Mandarin stereo 8 kHz calls with ``../shared/tools/make_calls.py``,
streams them at real time (two at a time, the native websocket, G.711 µ-law) through a ``calltone serve`` on
loopback (SQLite, in-process bus, the full speech pipeline), then reads every stored event back from its
database: the events per minute of each type, and the calls' event timelines and bodies, written to a
profile (``bench/shared_load_profile.json``).

``run`` has no ASR.  It starts its own ``redis-server`` (append-only, as ``tests/redis_server.py``) and
PostgreSQL (``tests/pg.py``'s binaries, but with ``fsync`` and synchronous commit ON, as in production)
on 127.0.0.1, unless given their URLs.  ``--calls`` simulated calls run at once, spread over ``--nodes``
simulated nodes, each node with its own ``AsyncStore`` over a ``PostgresRepository`` (one writer thread, a pool
of at most 4 connections: exactly a node's) and its own ``RedisBus``; the nodes are shared out over
``--procs`` processes.  Each simulated call replays one measured call's event timeline at real time from a
random point, with that call's real event bodies (its own call id, ``seq`` and ``server_time``), and does
what ``server/calls.py`` does: every event is one queued write (the call row's resume position, the event,
and the alert and call-row updates of its type), published on the bus once the write has committed; plus one
position-only write per second of call time.  A call that reaches its end publishes ``call.ended`` and a new
call takes its place (a new call id, its row upserted first), so ``--calls`` stay live.  Subscribers on
``--subscribers`` of the calls (their ``call:<id>`` topics, moved to the next call id when one ends) and one on
``alerts`` use a second ``RedisBus`` per process (another node's) and time each event from ``bus.publish`` to
``Subscription.get``.

Reported over the ``--seconds`` after ``--warmup``: events per second published (and the rate the profile asks
for), publish-to-subscriber p50/p99/max, store write p50/p99/max (submit to committed, the service's
``calltone_store_write_seconds``), Redis memory (INFO used_memory, end minus start, per call and per call-minute
of events held), PostgreSQL rows and sizes, and the CPU of the benchmark processes, ``redis-server`` and the
PostgreSQL server processes.  Prints markdown; ``--json FILE`` writes the figures too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from live import start_server  # bench/live.py

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "data" / "emotion-speech"
MAKE_CALLS = SHARED / "tools" / "make_calls.py"
PROFILE = Path(__file__).with_name("shared_load_profile.json")
MAX_CALLS = 5000
MAX_SECONDS = 900
HOST = "127.0.0.1"

sys.path.insert(0, str(ROOT))  # tests/redis_server.py, tests/pg.py


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


# =========================================================================== measure: real calls


def compose(out: Path, seed: int) -> list[Path]:
    for lang in ("en", "zh"):
        subprocess.run([sys.executable, str(MAKE_CALLS), str(CORPUS), str(out / lang), "--calls", "2", "--lang", lang,
                        "--seed", str(seed), "--telephony"], check=True, capture_output=True)
    return sorted(out.glob("*/*.wav"))


def scrape(port: int, name: str) -> float | None:
    import re

    try:
        text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    m = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


async def stream_lanes(url: str, lanes: list[list[tuple[str, Path]]]) -> None:
    from calltone.server.replay import read_audio, stream_call

    async def lane(items: list[tuple[str, Path]]) -> None:
        for call_id, path in items:
            audio, rate = read_audio(path)
            lang = "zh" if path.parent.name == "zh" else "en"
            await stream_call(url, call_id, audio, rate, speed=1.0, language=lang, agent_id="agent-001", frame_ms=20)

    await asyncio.gather(*(lane(items) for items in lanes))


def measure(args: argparse.Namespace) -> int:
    from calltone.server.sqlite import SqliteRepository

    work = Path(tempfile.mkdtemp(prefix="calltone-shared-load-"))
    files = sorted(Path(args.calls_dir).glob("*/*.wav")) if args.calls_dir else compose(work / "calls", args.seed)
    if not files:
        raise SystemExit("no calls")
    ids = [(f"{f.parent.name}-{f.stem}", f) for f in files]
    lanes: list[list[tuple[str, Path]]] = [[] for _ in range(args.lanes)]
    for i, item in enumerate(sorted(ids, key=lambda x: -x[1].stat().st_size)):  # longest first, round robin
        lanes[i % args.lanes].append(item)
    port = free_port()
    data = work / "data"
    proc = start_server(port, data)
    t0 = time.time()
    cpu0 = proc_cpu_s(proc.pid)
    try:
        asyncio.run(stream_lanes(f"ws://{HOST}:{port}", lanes))
        dropped = scrape(port, "calltone_asr_partials_dropped")
        superseded = scrape(port, "calltone_asr_partials_superseded")
        cpu = proc_cpu_s(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    wall = time.time() - t0
    repo = SqliteRepository(data / "calltone.db")
    calls = []
    totals: Counter = Counter()
    audio_s = 0.0
    for call_id, path in ids:
        row = repo.get_call(call_id)
        events = [json.loads(body) for _, _, body in repo.events(call_id)]
        duration = float(row["duration_s"] or 0.0)
        audio_s += duration
        counts = Counter(e["type"] for e in events)
        totals.update(counts)
        calls.append({"call_id": call_id, "language": path.parent.name, "duration_s": duration, "counts": dict(counts),
                      "events": events})
    repo.close()
    minutes = audio_s / 60
    per_min = {k: round(v / minutes, 2) for k, v in sorted(totals.items())}
    sizes = Counter()
    for c in calls:
        for e in c["events"]:
            sizes[e["type"]] += len(json.dumps(e, ensure_ascii=False).encode())
    profile = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "how": f"{len(ids)} calls of make_calls.py --telephony --seed {args.seed} (2 en, 2 zh, 8 kHz stereo), streamed at "
               f"real time {args.lanes} at a time through calltone serve (defaults: base model, partials on the customer "
               "channel), every stored event read back",
        "audio_s": round(audio_s, 1), "wall_s": round(wall, 1), "server_cpu_s": round(cpu, 1),
        "asr_partials_dropped": dropped, "asr_partials_superseded": superseded,
        "events_per_call_minute": per_min,
        "events_per_call_second": round(sum(totals.values()) / audio_s, 3),
        "mean_body_bytes": {k: round(sizes[k] / totals[k]) for k in sorted(totals)},
        "calls": calls,
    }
    out = Path(args.out)
    out.write_text(json.dumps(profile, ensure_ascii=False, indent=1) + "\n")
    print(f"profile: {out}")
    print_profile(profile)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def print_profile(p: dict) -> None:
    print(f"\n{p['how']}; {p['audio_s']} s of calls; measured {p['measured']}\n")
    print("| call | language | duration (s) | events | events/s |")
    print("|---|---|---:|---:|---:|")
    for c in p["calls"]:
        n = sum(c["counts"].values())
        print(f"| {c['call_id']} | {c['language']} | {c['duration_s']:.1f} | {n} | {n / c['duration_s']:.2f} |")
    print("\n| event type | per call-minute | mean body (bytes) |")
    print("|---|---:|---:|")
    for k, v in p["events_per_call_minute"].items():
        print(f"| {k} | {v} | {p['mean_body_bytes'][k]} |")
    print(f"| **all** | **{sum(p['events_per_call_minute'].values()):.1f}** "
          f"({p['events_per_call_second']} per second) | |")
    print(f"\npartial decodes dropped / superseded by the ASR worker: {p['asr_partials_dropped']} / "
          f"{p['asr_partials_superseded']}")


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# =========================================================================== run: the load


class LoadPg:
    """A PostgreSQL cluster like tests/pg.py's (Debian's binaries, as the postgres user under root), but durable:
    fsync and synchronous commit left ON, as a production server runs (``--pg-fast``: the tests' settings)."""

    def __init__(self, fast: bool, max_connections: int) -> None:
        from tests.pg import SERVER_OPTIONS, PgServer, _bin_dir

        bin_dir = _bin_dir()
        if bin_dir is None:
            raise SystemExit("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin); or pass --database-url")
        self.server = PgServer(bin_dir, Path(tempfile.mkdtemp(prefix="calltone-load-pg-")))
        opts = SERVER_OPTIONS if fast else ""
        opts = opts.replace("-c max_connections=200", "")
        self.options = f"{opts} -c max_connections={max_connections} -c shared_buffers=256MB".strip()

    def start(self) -> str:
        s = self.server
        s.init()
        opts = f"-p {s.port} -c listen_addresses={HOST} -k {s.root} {self.options}"
        s._cmd("pg_ctl", "-D", str(s.data), "-l", str(s.root / "server.log"), "-o", opts, "-w", "start")
        return s.create_database()

    def pids(self) -> list[int]:
        """The postmaster and every backend / background process of this cluster."""
        pm = int((self.server.data / "postmaster.pid").read_text().split()[0])
        return [pm] + children(pm)

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.server.root, ignore_errors=True)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int(d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_of(pids: list[int]) -> float:
    return sum(proc_cpu_s(p) for p in pids)


class SimCall:
    """One simulated call: a measured call's events replayed at real time from ``offset``, stored then published
    exactly as server/calls.py's LiveCall does (one queued write per event carrying the resume position; one
    position-only write per second of call time; publish once the write committed)."""

    def __init__(self, node: "SimNode", n: int, template: dict, offset: float, sampled: bool) -> None:
        self.node, self.n, self.template, self.sampled = node, n, template, sampled
        self.offset = offset
        self.generation = 0
        self.call_id = self._new_id()

    def _new_id(self) -> str:
        return f"load-{self.node.proc}-{self.n}-{self.generation}"

    async def run(self, until: float) -> None:
        first = True
        while time.time() < until:
            await self._open()
            if self.sampled:  # the next call id is followed before it starts, as an open feed would be
                self.node.follow(f"load-{self.node.proc}-{self.n}-{self.generation + 1}")
            events = self.template["events"]
            offset = self.offset if first else 0.0
            first = False
            start = time.time() - offset
            self.seq, self.finals, self.alert_ids = 0, [], {}
            i = next((k for k, e in enumerate(events) if e["_at"] >= offset), len(events))
            next_pos = math.floor(offset) + 1.0
            while i < len(events):
                due_ev, due_pos = start + events[i]["_at"], start + next_pos
                delay = min(due_ev, due_pos) - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.time() >= until:
                    return
                if due_pos <= due_ev:
                    self.submit([], position=next_pos)  # the whole-second resume position (LiveCall.push)
                    next_pos += 1.0
                else:
                    self.emit(events[i], position=events[i]["_at"])
                    i += 1
            self.generation += 1
            self.call_id = self._new_id()

    async def _open(self) -> None:
        """registry.open: the call row upserted (status live) before its first event."""
        now = time.time()
        call = {"call_id": self.call_id, "status": "live", "agent_id": f"agent-{self.n:04d}",
                "language": self.template["language"], "metadata": {}, "roles": ["customer", "agent"],
                "started_at": now, "updated_at": now}
        await self.node.store.write(lambda r: r.upsert_call(call))

    def emit(self, template: dict, position: float) -> None:
        ev = {k: v for k, v in template.items() if k != "_at"}
        typ = ev["type"]
        self.seq += 1
        now = time.time()
        ev["call_id"], ev["seq"], ev["server_time"] = self.call_id, self.seq, round(now, 3)
        if "alert_id" in ev:
            ev["alert_id"] = self.alert_ids.setdefault(ev["alert_id"], os.urandom(6).hex())
        body = json.dumps(ev, ensure_ascii=False)
        call_id, seq, t = self.call_id, self.seq, ev.get("t", 0.0)
        ops = [lambda r: r.append_event(call_id, seq, typ, t, now, body)]
        alert = None
        if typ == "transcript.final":
            self.finals.append(ev)
            del self.finals[:-6]
        elif typ == "escalation.raised":
            excerpt = [{"channel": e["channel"], "t": e["end"], "text": e["text"]} for e in self.finals]
            row = {"alert_id": ev["alert_id"], "call_id": call_id, "agent_id": f"agent-{self.n:04d}",
                   "channel": ev["channel"], "reason": ev.get("reason"), "evidence": ev.get("evidence"), "excerpt": excerpt,
                   "status": "open", "t": t, "seq": seq, "raised_at": now}
            n_esc = sum(1 for k in self.alert_ids)
            ops += [lambda r: r.insert_alert(row), lambda r: r.update_call(call_id, escalations=n_esc)]
            alert = json.dumps({"type": typ, **row, "cleared_at": None, "replay": False}, ensure_ascii=False)
        elif typ == "escalation.cleared":
            aid = ev["alert_id"]
            ops.append(lambda r: r.update_alert(aid, status="cleared", cleared_at=now))
            alert = json.dumps({"type": typ, "alert_id": aid, "call_id": call_id, "status": "cleared", "cleared_at": now,
                                "reason": ev.get("reason")}, ensure_ascii=False)
        elif typ == "call.ended":
            summary = ev.get("summary") or {}
            duration = summary.get("duration_s")
            ops.append(lambda r: r.update_call(call_id, status="ended", ended_at=now, duration_s=duration, summary=summary,
                                               updated_at=now))
        elif typ == "call.started" and ev.get("language"):
            lang = ev["language"]
            ops.append(lambda r: r.update_call(call_id, language=lang))
        self.submit(ops, position, publish=(typ, body, seq, ev.get("channel"), alert))

    def submit(self, ops: list, position: float, publish: tuple | None = None) -> None:
        node, call_id, pos = self.node, self.call_id, round(position, 3)

        def write(repo) -> None:
            repo.update_call(call_id, duration_s=pos)
            for op in ops:
                op(repo)

        submitted = time.perf_counter()
        fut = node.store.submit(write)
        fut.add_done_callback(lambda f: node.loop.call_soon_threadsafe(node.committed, f, submitted, call_id, publish,
                                                                       self.sampled))


class SimNode:
    """One simulated calltone node: its AsyncStore (PostgresRepository) and its RedisBus."""

    def __init__(self, proc: int, store, bus, stats: "ProcStats") -> None:
        self.proc, self.store, self.bus, self.stats = proc, store, bus, stats
        self.loop = asyncio.get_running_loop()
        self.follow = stats.follow

    def committed(self, fut, submitted: float, call_id: str, publish: tuple | None, sampled: bool) -> None:
        from calltone.server.bus import Message

        now = time.perf_counter()
        st = self.stats
        if fut.exception() is not None:
            st.write_errors += 1
            return
        if st.measuring():
            st.write_s.append(now - submitted)
            st.writes += 1
        if publish is None:
            return
        typ, body, seq, channel, alert = publish
        if sampled:
            st.pub_times[(call_id, seq)] = now
        self.bus.publish(f"call:{call_id}", Message.of(typ, body, seq, channel))
        if st.measuring():
            st.published += 1
            st.types[typ] += 1
        if alert is not None:
            st.alert_times[(call_id, typ)] = now
            self.bus.publish("alerts", Message.of(typ, alert))


class ProcStats:
    def __init__(self, t_start: float, t_end: float, follower) -> None:
        self.t_start, self.t_end, self.follower = t_start, t_end, follower
        self.write_s: list[float] = []
        self.sub_s: list[float] = []
        self.alert_s: list[float] = []
        self.lag_s: list[float] = []
        self.pub_times: dict[tuple[str, int], float] = {}
        self.alert_times: dict[tuple[str, str], float] = {}
        self.writes = self.published = self.delivered = self.write_errors = 0
        self.types: Counter = Counter()
        self.consumers: list[asyncio.Task] = []

    def measuring(self) -> bool:
        return self.t_start <= time.time() < self.t_end

    def follow(self, call_id: str) -> None:
        sub = self.follower.subscribe(f"call:{call_id}", 256)
        self.consumers.append(asyncio.ensure_future(self._consume(sub, call_id)))

    async def _consume(self, sub, call_id: str) -> None:
        with sub:
            while True:
                msg = await sub.get()
                t = self.pub_times.pop((call_id, msg.seq), None)
                if t is not None and self.measuring():
                    self.sub_s.append(time.perf_counter() - t)
                    self.delivered += 1
                if msg.type == "call.ended":
                    return

    async def loop_lag(self) -> None:
        """How late this process's event loop runs a 50 ms timer: the benchmark's own saturation, not Redis's."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.05)
            if self.measuring():
                self.lag_s.append(time.perf_counter() - t0 - 0.05)

    async def consume_alerts(self) -> None:
        with self.follower.subscribe("alerts", 1024) as sub:
            while True:
                msg = await sub.get()
                d = json.loads(msg.json)
                t = self.alert_times.pop((d.get("call_id"), msg.type), None)
                if t is not None and self.measuring():
                    self.alert_s.append(time.perf_counter() - t)


def load_profile(path: Path) -> list[dict]:
    p = json.loads(path.read_text())
    templates = []
    for c in p["calls"]:
        evs = c["events"]
        t0 = evs[0]["server_time"]
        for e in evs:
            e["_at"] = round(e["server_time"] - t0, 3)  # when the service emitted it, from the call's start
        templates.append({"language": c["language"], "events": evs, "duration_s": evs[-1]["_at"]})
    return templates


def proc_main(proc: int, cfg: dict, out) -> None:
    try:
        out.put(asyncio.run(proc_run(proc, cfg)))
    except BaseException as exc:  # noqa: BLE001
        import traceback

        out.put({"error": f"{exc!r}\n{traceback.format_exc()}"})


async def proc_run(proc: int, cfg: dict) -> dict:
    from calltone.server.postgres import PostgresRepository
    from calltone.server.redisbus import RedisBus
    from calltone.server.store import AsyncStore

    rng = random.Random(cfg["seed"] + proc)
    templates = load_profile(Path(cfg["profile"]))
    follower = RedisBus(cfg["redis_url"], 256)
    await follower.start()
    stats = ProcStats(cfg["t_start"], cfg["t_end"], follower)
    nodes = []
    for _ in range(cfg["nodes"]):
        repo = await asyncio.to_thread(PostgresRepository, cfg["database_url"])
        bus = RedisBus(cfg["redis_url"], 256)
        await bus.start()
        nodes.append(SimNode(proc, AsyncStore(repo), bus, stats))
    calls = []
    for n in range(cfg["calls"]):
        tpl = templates[n % len(templates)]
        calls.append(SimCall(nodes[n % len(nodes)], n, tpl, rng.uniform(0, tpl["duration_s"]), n < cfg["subscribers"]))
    for c in calls:
        if c.sampled:
            stats.follow(c.call_id)
    alerts = asyncio.ensure_future(stats.consume_alerts())
    lag = asyncio.ensure_future(stats.loop_lag())
    await asyncio.sleep(max(0.0, cfg["t_go"] - time.time()))
    tasks = [asyncio.ensure_future(c.run(cfg["t_end"])) for c in calls]
    await asyncio.sleep(max(0.0, cfg["t_start"] - time.time()))
    c_start = os.times()
    await asyncio.sleep(max(0.0, cfg["t_end"] - time.time()))
    c_end = os.times()
    backlog = {"store_pending_max": max(n.store.pending for n in nodes),
               "store_pending_sum": sum(n.store.pending for n in nodes),
               "bus_outbox_sum": sum(len(n.bus._outbox) for n in nodes)}
    await asyncio.gather(*tasks, return_exceptions=True)
    deadline = time.time() + 30
    while time.time() < deadline and any(n.store.pending or n.bus._outbox for n in nodes):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    for t in stats.consumers + [alerts, lag]:
        t.cancel()
    await asyncio.gather(*stats.consumers, alerts, lag, return_exceptions=True)
    errors = [repr(r) for r in (t.exception() for t in tasks if not t.cancelled()) if r is not None]
    stale = len(stats.pub_times)
    for n in nodes:
        await n.bus.close()
        await asyncio.to_thread(n.store.close)
    await follower.close()
    return {"write_s": stats.write_s, "sub_s": stats.sub_s, "lag_s": stats.lag_s, "alert_s": stats.alert_s, "writes": stats.writes,
            "published": stats.published, "delivered": stats.delivered, "write_errors": stats.write_errors,
            "types": dict(stats.types), "undelivered_sampled": stale, "errors": errors[:3], **backlog,
            "cpu_s": (c_end.user + c_end.system) - (c_start.user + c_start.system),
            "bus_unpublished": sum(n.bus.stats.unpublished for n in nodes)}


def redis_info(url: str) -> dict:
    import redis

    r = redis.Redis.from_url(url, decode_responses=True)
    info = r.info("memory")
    keys = entries = live = ended = 0
    for key in r.scan_iter("calltone:call:*", count=1000):
        keys += 1
        n = r.xlen(key)
        entries += n
        if r.ttl(key) > 3600:
            live += 1
        else:
            ended += 1
    r.close()
    return {"used_memory": info["used_memory"], "used_memory_rss": info["used_memory_rss"], "streams": keys,
            "entries": entries, "live_streams": live, "ended_streams": ended}


def pg_query(url: str, sql: str):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchone()


def run(args: argparse.Namespace) -> int:
    import multiprocessing as mp

    if not 1 <= args.calls <= MAX_CALLS or not 1 <= args.seconds <= MAX_SECONDS:
        raise SystemExit(f"--calls 1..{MAX_CALLS}, --seconds 1..{MAX_SECONDS}")
    for url in (args.redis_url, args.database_url):
        if url and not any(h in url for h in ("127.0.0.1", "localhost", "/run/", "%2F")):
            raise SystemExit(f"{url}: loopback only")
    profile = json.loads(Path(args.profile).read_text())
    redis_srv = pg = None
    redis_pid = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            from tests.redis_server import RedisServer

            redis_srv = RedisServer(Path(tempfile.mkdtemp(prefix="calltone-load-redis-"))).start()
            redis_url, redis_pid = redis_srv.url, redis_srv.proc.pid
        if args.database_url:
            db_url = args.database_url
        else:
            pg = LoadPg(args.pg_fast, max(200, args.nodes * 4 + 50))
            db_url = pg.start()
        from calltone.server.postgres import PostgresRepository

        PostgresRepository(db_url).close()  # migrate once, before the nodes open it
        procs = max(1, min(args.procs, args.nodes))
        setup_s = 5.0 + 0.25 * args.nodes / procs + args.calls / procs / 400
        t_go = time.time() + setup_s
        t_start = t_go + args.warmup
        t_end = t_start + args.seconds
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        workers = []
        for i in range(procs):
            share = lambda total: total // procs + (1 if i < total % procs else 0)  # noqa: E731
            cfg = {"seed": args.seed, "profile": str(args.profile), "redis_url": redis_url, "database_url": db_url,
                   "nodes": share(args.nodes), "calls": share(args.calls), "subscribers": share(args.subscribers),
                   "t_go": t_go, "t_start": t_start, "t_end": t_end}
            w = ctx.Process(target=proc_main, args=(i, cfg, q), daemon=True)
            w.start()
            workers.append(w)
        time.sleep(max(0.0, t_go - time.time() - 1.0))
        mem0 = redis_info(redis_url)
        wal0 = pg_query(db_url, "SELECT pg_current_wal_lsn()")[0]
        time.sleep(max(0.0, t_start - time.time()))
        pg_pids = pg.pids() if pg else []
        cpu_redis0 = proc_cpu_s(redis_pid) if redis_pid else 0.0
        cpu_pg0 = cpu_of(pg_pids)
        load0 = os.getloadavg()
        time.sleep(max(0.0, t_end - time.time()))
        cpu_redis = (proc_cpu_s(redis_pid) - cpu_redis0) if redis_pid else None
        pg_pids_end = pg.pids() if pg else []
        cpu_pg = (cpu_of(pg_pids_end) - cpu_pg0 - cpu_of([p for p in pg_pids_end if p not in pg_pids])) if pg else None
        mem1 = redis_info(redis_url)
        wal_bytes = pg_query(db_url, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal0}')")[0]
        load1 = os.getloadavg()
        results = [q.get(timeout=args.seconds + 300) for _ in workers]
        for w in workers:
            w.join(30)
        bad = [r["error"] for r in results if "error" in r]
        if bad:
            raise SystemExit("a load process failed:\n" + bad[0])
        rows = pg_query(db_url, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM calls), "
                                "pg_total_relation_size('events'), pg_total_relation_size('calls'), "
                                "pg_total_relation_size('alerts'), pg_database_size(current_database())")
    finally:
        if redis_srv is not None:
            redis_srv.stop()
            shutil.rmtree(redis_srv.folder, ignore_errors=True)
        if pg is not None:
            pg.stop()
    fig = summarise(args, profile, results, mem0, mem1, rows, wal_bytes, cpu_redis, cpu_pg, (load0, load1))
    print_run(args, fig)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")
    return 0


def summarise(args, profile, results, mem0, mem1, rows, wal_bytes, cpu_redis, cpu_pg, loads) -> dict:
    write_s = [x for r in results for x in r["write_s"]]
    sub_s = [x for r in results for x in r["sub_s"]]
    alert_s = [x for r in results for x in r["alert_s"]]
    published = sum(r["published"] for r in results)
    writes = sum(r["writes"] for r in results)
    types: Counter = Counter()
    for r in results:
        types.update(r["types"])
    templates = profile["calls"]  # simulated call n replays template n % 4: each template's own rate, equally weighted
    rates = [sum(c["counts"].values()) / c["duration_s"] for c in templates]
    target = sum(rates[n % len(rates)] for n in range(args.calls))
    lag_s = [x for r in results for x in r["lag_s"]]
    mem_delta = mem1["used_memory"] - mem0["used_memory"]
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {
        "calls": args.calls, "nodes": args.nodes, "procs": args.procs, "subscribed_calls": args.subscribers,
        "seconds": args.seconds, "warmup_s": args.warmup, "pg": "fast (fsync off)" if args.pg_fast else "durable (fsync on)",
        "target_events_per_s": round(target, 1),
        "events_per_s": round(published / args.seconds, 1),
        "writes_per_s": round(writes / args.seconds, 1),
        "events_by_type_per_s": {k: round(v / args.seconds, 1) for k, v in sorted(types.items())},
        "delivered_to_subscribers_per_s": round(sum(r["delivered"] for r in results) / args.seconds, 1),
        "pub_sub_ms": {"p50": ms(pct(sub_s, 50)), "p99": ms(pct(sub_s, 99)), "max": ms(max(sub_s, default=None)),
                       "n": len(sub_s)},
        "alert_pub_sub_ms": {"p50": ms(pct(alert_s, 50)), "p99": ms(pct(alert_s, 99)), "n": len(alert_s)},
        "loop_lag_ms": {"p50": ms(pct(lag_s, 50)), "p99": ms(pct(lag_s, 99)), "max": ms(max(lag_s, default=None))},
        "store_write_ms": {"p50": ms(pct(write_s, 50)), "p99": ms(pct(write_s, 99)), "max": ms(max(write_s, default=None)),
                           "n": len(write_s)},
        "write_errors": sum(r["write_errors"] for r in results),
        "backlog_at_end": {"store_pending_sum": sum(r["store_pending_sum"] for r in results),
                           "store_pending_max_node": max(r["store_pending_max"] for r in results),
                           "bus_outbox_sum": sum(r["bus_outbox_sum"] for r in results),
                           "bus_unpublished": sum(r["bus_unpublished"] for r in results)},
        "undelivered_sampled_events": sum(r["undelivered_sampled"] for r in results),
        "redis": {"used_memory_before": mem0["used_memory"], "used_memory_after": mem1["used_memory"],
                  "rss_after": mem1["used_memory_rss"], "delta_per_call_bytes": round(mem_delta / args.calls),
                  "streams_after": mem1["streams"], "live_streams": mem1["live_streams"],
                  "ended_streams": mem1["ended_streams"], "entries_after": mem1["entries"],
                  "bytes_per_entry": round(mem_delta / max(1, mem1["entries"] - mem0["entries"]))},
        "postgres": {"event_rows": rows[0], "call_rows": rows[1], "events_bytes": rows[2], "calls_bytes": rows[3],
                     "alerts_bytes": rows[4], "database_bytes": rows[5], "bytes_per_event_row": round(rows[2] / max(1, rows[0])),
                     "wal_bytes_per_s": round(float(wal_bytes) / args.seconds)},
        "cpu_cores": {"bench_processes": round(sum(r["cpu_s"] for r in results) / args.seconds, 2),
                      "redis_server": None if cpu_redis is None else round(cpu_redis / args.seconds, 2),
                      "postgres": None if cpu_pg is None else round(cpu_pg / args.seconds, 2)},
        "loadavg_start_end": [round(loads[0][0], 2), round(loads[1][0], 2)],
        "errors": [e for r in results for e in r["errors"]][:3],
    }


def print_run(args, f: dict) -> None:
    r, p, c = f["redis"], f["postgres"], f["cpu_cores"]
    print(f"\n{f['calls']} simulated calls on {f['nodes']} simulated nodes ({f['procs']} processes), "
          f"{f['subscribed_calls']} followed, {f['seconds']} s measured after {f['warmup_s']} s; PostgreSQL {f['pg']}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| events per second published (the replayed calls' own rates ask {f['target_events_per_s']}) | "
          f"**{f['events_per_s']}** |")
    print(f"| store writes per second (events + whole-second positions) | {f['writes_per_s']} |")
    print(f"| events delivered to subscribers per second | {f['delivered_to_subscribers_per_s']} |")
    s = f["pub_sub_ms"]
    print(f"| publish to subscriber p50 / p99 / max (ms) | {s['p50']} / {s['p99']} / {s['max']} (n={s['n']}) |")
    a = f["alert_pub_sub_ms"]
    print(f"| alerts: publish to subscriber p50 / p99 (ms) | {a['p50']} / {a['p99']} (n={a['n']}) |")
    w = f["store_write_ms"]
    print(f"| store write (submit to committed) p50 / p99 / max (ms) | {w['p50']} / {w['p99']} / {w['max']} (n={w['n']}) |")
    g = f["loop_lag_ms"]
    print(f"| benchmark event loops: lateness of a 50 ms timer p50 / p99 / max (ms) | {g['p50']} / {g['p99']} / {g['max']} |")
    b = f["backlog_at_end"]
    print(f"| backlog at the end: store writes queued (all nodes / worst node), bus outbox | "
          f"{b['store_pending_sum']} / {b['store_pending_max_node']}, {b['bus_outbox_sum']} |")
    print(f"| Redis used_memory before / after (MiB) | {r['used_memory_before'] / 2**20:.1f} / "
          f"{r['used_memory_after'] / 2**20:.1f} |")
    print(f"| Redis memory per call (after - before) / calls | {r['delta_per_call_bytes'] / 1024:.1f} KiB |")
    print(f"| Redis streams (live / ended) and entries | {r['live_streams']} / {r['ended_streams']}, {r['entries_after']} |")
    print(f"| Redis bytes per stream entry | {r['bytes_per_entry']} |")
    print(f"| PostgreSQL rows: events, calls | {p['event_rows']}, {p['call_rows']} |")
    print(f"| PostgreSQL size: events, calls, database (MiB) | {p['events_bytes'] / 2**20:.1f}, "
          f"{p['calls_bytes'] / 2**20:.1f}, {p['database_bytes'] / 2**20:.1f} |")
    print(f"| PostgreSQL bytes per event row (table + indexes) | {p['bytes_per_event_row']} |")
    print(f"| PostgreSQL WAL written per second | {p['wal_bytes_per_s'] / 2**20:.2f} MiB |")
    print(f"| CPU (cores): benchmark processes, redis-server, PostgreSQL | {c['bench_processes']}, {c['redis_server']}, "
          f"{c['postgres']} |")
    print(f"| load average (1 min) at start / end | {f['loadavg_start_end'][0]} / {f['loadavg_start_end'][1]} |")
    print(f"| write errors, events of followed calls never delivered | {f['write_errors']}, "
          f"{f['undelivered_sampled_events']} |")
    print("\nevents per second by type: " + ", ".join(f"{k} {v}" for k, v in f["events_by_type_per_s"].items()))
    if f["errors"]:
        print("errors:", f["errors"])




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="stream real calls through calltone serve; write the event profile")
    m.add_argument("--calls-dir", help="folder of <lang>/<call>.wav (default: compose 2 en + 2 zh)")
    m.add_argument("--seed", type=int, default=21)
    m.add_argument("--lanes", type=int, default=2, help="calls streamed at once")
    m.add_argument("--out", default=str(PROFILE))
    r = sub.add_parser("run", help="the load: simulated calls through Redis and PostgreSQL, no ASR")
    r.add_argument("--calls", type=int, default=1000, help=f"concurrent simulated calls (at most {MAX_CALLS})")
    r.add_argument("--seconds", type=float, default=60, help=f"measured seconds (at most {MAX_SECONDS})")
    r.add_argument("--warmup", type=float, default=10, help="seconds of load before measuring")
    r.add_argument("--nodes", type=int, default=100, help="simulated nodes (each its own store and bus)")
    r.add_argument("--procs", type=int, default=2, help="processes the nodes are shared out over")
    r.add_argument("--subscribers", type=int, default=100, help="calls followed by a subscriber")
    r.add_argument("--profile", default=str(PROFILE), help="from `measure`")
    r.add_argument("--redis-url", help="a running Redis on loopback (default: start redis-server)")
    r.add_argument("--database-url", help="a PostgreSQL database on loopback (default: start a cluster)")
    r.add_argument("--pg-fast", action="store_true", help="fsync and synchronous_commit off (the tests' settings)")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.cmd == "measure":
        return measure(args)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
