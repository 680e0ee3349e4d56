"""Check deploy/haproxy.cfg and the drain procedure without Docker: everything on 127.0.0.1.

    .venv/bin/python deploy/check_drain.py [--call samples/demo_en.wav] [--drain-after 12]

Starts a redis-server and a PostgreSQL cluster (the tests' helpers, tests/redis_server.py and tests/pg.py),
two ``calltone serve`` nodes sharing them (``CALLTONE_SERVER__BUS_URL``, ``CALLTONE_SERVER__DATABASE_URL``) and
HAProxy with deploy/haproxy.cfg, changed only where Docker differs (binds on loopback ports, the two nodes
named instead of found by DNS).  A producer streams one call at real time through HAProxy; after
``--drain-after`` seconds the node holding it is drained as deploy/drain.sh does (its HAProxy slots set to DRAIN
through the runtime API, then SIGTERM).  The producer reconnects with the same call id when it is closed with
1012 and re-sends from the ``t_offset`` it is given.  Checked: the call resumed on the other node, its stored
events have seqs 1..N with no gap or repeat and end in ``call.ended``, and what the drained node's /readyz
answered from the SIGTERM until it exited.  Needs Debian's haproxy, redis-server and postgresql.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "drain-check-ingest"  # nodes with tokens, as in compose.yaml (dev mode would refuse HAProxy's Host header)
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, timeout: float = 3.0) -> tuple[int | str, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (OSError, ValueError) as e:
        return type(e).__name__, None


def haproxy_cfg(src: str, front: int, stats: int, runtime: int, nodes: list[int]) -> str:
    cfg = src.replace("stats socket ipv4@127.0.0.1:9999", f"stats socket ipv4@127.0.0.1:{runtime}")
    cfg = cfg.replace("    bind :80\n", f"    bind 127.0.0.1:{front}\n").replace("    bind :8404\n", f"    bind 127.0.0.1:{stats}\n")
    servers = "".join(f"    server node{i + 1} 127.0.0.1:{p} check\n" for i, p in enumerate(nodes))
    cfg, n = re.subn(r"    server-template node .*\n", servers, cfg)
    assert n == 2, "expected two server-template lines (ingest, api)"
    cfg = re.sub(r"resolvers docker\n(    .*\n)+", "", cfg)
    cfg = cfg.replace("    maxconn 20000\n", "    maxconn 2000\n")  # this shell's open-file limit, not a container's
    return cfg.replace("log stdout format raw local0 info", "log stderr format raw local0 warning")


def runtime_api(port: int, command: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def server_states(port: int, backend: str) -> dict[str, str]:
    """srv_name -> operational state (0 down, 2 up, ...) and admin state, from `show servers state`."""
    out = {}
    for line in runtime_api(port, f"show servers state {backend}").splitlines():
        f = line.split()
        if len(f) > 6 and f[1] == backend:
            out[f[3]] = f"op={f[5]} admin={f[6]}"
    return out


async def produce(url: str, call_id: str, audio, rate: int, log: list[str]) -> dict:
    """Stream ``audio`` as one call at real time; on close 1012 reconnect with the same id and re-send from t_offset."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from calltone.speech.audio import encode_pcm

    step = rate // 50  # 20 ms
    pos, connects, started_replies = 0, 0, []
    while True:
        connects += 1
        try:
            async with connect(f"{url}/v1/calls/{call_id}/audio", open_timeout=10,
                               additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": "mulaw", "channels": 2,
                                          "channel_roles": ["customer", "agent"], "language": "en", "agent_id": "a1"}))
                started = json.loads(await ws.recv())
                if started.get("type") != "started":
                    log.append(f"refused: {started}")
                    await asyncio.sleep(0.5)
                    continue
                started_replies.append(started)
                if started["resumed"]:
                    pos = min(pos, int(round(started["t_offset"] * rate)))  # re-send what the server did not take
                log.append(f"connect {connects}: resumed={started['resumed']} seq={started['seq']} "
                           f"t_offset={started['t_offset']} (sending from {pos / rate:.2f} s)")
                t0 = time.monotonic() - pos / rate
                while pos < len(audio):
                    await ws.send(encode_pcm(audio[pos : pos + step], "mulaw"))
                    pos += step
                    delay = t0 + pos / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await ws.send(json.dumps({"type": "stop"}))
                async for _ in ws:
                    pass
                log.append(f"closed {ws.close_code} after stop")
                return {"connects": connects, "started": started_replies}
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            log.append(f"connection {connects} closed by the server: {code} {exc.rcvd.reason if exc.rcvd else ''}")
            if code != 1012:
                raise
        except OSError as exc:
            log.append(f"connect {connects} failed: {exc}")
            await asyncio.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--call", default=str(ROOT / "samples" / "demo_en.wav"), help="a stereo recording")
    ap.add_argument("--seconds", type=float, default=30.0, help="stream this much of it")
    ap.add_argument("--drain-after", type=float, default=12.0)
    args = ap.parse_args()
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed (Debian: apt-get install haproxy)")
    from calltone.server.postgres import PostgresRepository
    from calltone.server.replay import read_audio
    from tests.pg import PgServer, _bin_dir
    from tests.redis_server import RedisServer

    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="calltone-drain-check-"))
    redis = RedisServer(work / "redis").start()
    pg = PgServer(_bin_dir(), Path(tempfile.mkdtemp(prefix="calltone-drain-pg-")))
    pg.init()
    pg.start()
    db = pg.create_database()
    PostgresRepository(db).close()  # migrated once
    procs: list[subprocess.Popen] = []
    try:
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            env = dict(os.environ, CALLTONE_SERVER__DATABASE_URL=db, CALLTONE_SERVER__BUS_URL=redis.url,
                       CALLTONE_SERVER__TOKENS=json.dumps({TOKEN: "ingest"}),
                       CALLTONE_SERVER__DATA_DIR=str(work / f"node{i + 1}"))
            procs.append(subprocess.Popen([sys.executable, "-m", "calltone.cli", "serve", "--port", str(port)], env=env,
                                          stdout=open(work / f"node{i + 1}.log", "w"), stderr=subprocess.STDOUT))
        front, stats, rt = free_port(), free_port(), free_port()
        cfg = work / "haproxy.cfg"
        cfg.write_text(haproxy_cfg((ROOT / "deploy" / "haproxy.cfg").read_text(), front, stats, rt, ports))
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        print("haproxy -c:", (check.stdout + check.stderr).strip().splitlines()[-1])
        hap = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=open(work / "haproxy.log", "w"),
                               stderr=subprocess.STDOUT)
        procs.append(hap)
        deadline = time.monotonic() + 240
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                states = server_states(rt, "ingest")
            except OSError:
                continue
            if len(states) == 2 and all(s.startswith("op=2") for s in states.values()):
                break
        else:
            raise SystemExit(f"the nodes did not come up in HAProxy: {states}; see {work}")
        print("HAProxy sees both nodes up (GET /readyz 200):", server_states(rt, "ingest"))
        status, body = http(f"http://127.0.0.1:{front}/readyz")
        print(f"GET /readyz through HAProxy: {status} {body}")

        audio, rate = read_audio(args.call)
        audio = audio[: int(args.seconds * rate)]
        if audio.ndim == 1 or audio.shape[1] == 1:
            audio = np.repeat(audio.reshape(-1, 1), 2, axis=1)
        call_id = f"drain-check-{int(time.time())}"
        log: list[str] = []
        readyz_seen: list[str] = []

        async def scenario() -> dict:
            prod = asyncio.ensure_future(produce(f"ws://127.0.0.1:{front}", call_id, audio, rate, log))
            await asyncio.sleep(args.drain_after)
            counts = [http(f"http://127.0.0.1:{p}/readyz")[1]["active_calls"] for p in ports]
            victim = counts.index(1)
            name = f"node{victim + 1}"
            for backend in ("ingest", "api"):
                runtime_api(rt, f"set server {backend}/{name} state drain")
            log.append(f"{name} (active calls {counts}) set to DRAIN in both backends: {server_states(rt, 'ingest')}")
            status, body = http(f"http://127.0.0.1:{ports[victim]}/readyz")
            log.append(f"{name} /readyz while DRAIN in HAProxy, before SIGTERM: {status} {body}")
            t_term = time.monotonic()
            procs[victim].send_signal(signal.SIGTERM)
            log.append(f"SIGTERM to {name}")
            while procs[victim].poll() is None:
                status, body = http(f"http://127.0.0.1:{ports[victim]}/readyz", timeout=1.0)
                readyz_seen.append(f"{time.monotonic() - t_term:.2f}s {status} {body}")
                await asyncio.sleep(0.1)
            log.append(f"{name} exited with {procs[victim].returncode} {time.monotonic() - t_term:.1f} s after SIGTERM")
            result = await prod
            result["victim"] = name
            return result

        result = asyncio.run(scenario())
        for line in log:
            print("  " + line)
        print(f"{result['victim']} /readyz from SIGTERM to exit ({len(readyz_seen)} polls): first {readyz_seen[:2]}, "
              f"last {readyz_seen[-1:]}")
        time.sleep(1.0)
        from calltone.server.postgres import PostgresRepository as Repo

        repo = Repo(db)
        rows = repo.events(call_id)
        row = repo.get_call(call_id)
        repo.close()
        seqs = [s for s, _, _ in rows]
        types = [t for _, t, _ in rows]
        ok = (seqs == list(range(1, len(seqs) + 1)) and types[-1] == "call.ended" and row["status"] == "ended"
              and result["connects"] >= 2 and any(s["resumed"] for s in result["started"]))
        resumed_at = [json.loads(b)["metadata"] for _, t, b in rows if t == "call.started"]
        print(f"stored: {len(seqs)} events, seqs 1..{seqs[-1] if seqs else 0} without gaps: "
              f"{seqs == list(range(1, len(seqs) + 1))}; call.started metadata: {resumed_at}; last {types[-1]}; "
              f"row status {row['status']}")
        print("DRAIN CHECK", "PASSED" if ok else "FAILED", f"(work folder {work})")
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.stop()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
