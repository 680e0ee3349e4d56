"""Batch scoring on Ray, with the jobs in the store.

* The jobs part of the repository contract, on SQLite and a real PostgreSQL (``tests/pg.py``): items, claims
  and their fencing (a node that lost its claim changes nothing).
* A real two-node Ray cluster on loopback (two ``ray start --block`` processes, one CPU each) and two real
  ``calltone serve`` nodes sharing one store and one reports folder with ``batch.engine = "ray"``: a job over
  six short composed calls; the Ray worker node is killed (SIGKILL, its whole process group) once the first
  call is done and the calltone node running the job once the second is; the other calltone node takes the
  job over when its claim runs out and scores only what was not finished; the job's progress, read from the
  store through both nodes, only rises; a rerun (``calltone score --engine ray`` into the job's reports)
  scores nothing new.

Skipped with the reason when Ray is not installed or cannot start here; a failure under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from calltone.server.database import open_repository
from calltone.server.store import Repository

from .conftest import EMOTION_SPEECH, MAKE_CALLS, require
from .pg import PgServer, postgres  # noqa: F401 -- the session's PostgreSQL server

QA = "qa-token-ray-0001"
BIN = Path(sys.executable).parent
CLIP_S = 60.0  # each composed call cut to this: six short calls
LEASE_S = 4.0
READY_MARK = "This command will now block forever"  # `ray start --block`: the node is up and registered
# The head's GCS checks each node every 300 ms and calls it dead after 3 misses (Ray's defaults: 3 s, 5): a
# killed node's actors are known dead within about a second, while its job is still running.
HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "300",
                "RAY_health_check_timeout_ms": "300", "RAY_health_check_failure_threshold": "3"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (under CI the Ray test must run)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the jobs in the repository


@pytest.fixture(params=["sqlite", "postgresql"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'calltone.db'}"
    else:
        server: PgServer = request.getfixturevalue("postgres")
        url = server.create_database()
    r = open_repository(url, tmp_path)
    yield r
    r.close()


def test_jobs_items_and_claims_are_fenced(repo: Repository) -> None:
    options = {"customer_channel": 0, "mono": False, "language": "zh", "transcript": True}
    items = [{"seq": k, "file": f"/rec/{n}.wav", "name": n, "status": "pending", "call_id": f"{n}-j1"}
             for k, n in enumerate(["b", "a"])]
    with repo.transaction():
        repo.insert_job({"job_id": "j1", "status": "queued", "engine": "ray", "options": options, "uploaded": True,
                         "created_at": 100.0}, items)
        repo.insert_job({"job_id": "j0", "status": "done", "engine": "local", "options": options, "created_at": 50.0}, [])
    assert repo.claimable_jobs(now=200.0) == ["j1"]  # finished jobs are nobody's to claim
    assert repo.claim_job("j1", "node-a", now=200.0, lease_until=210.0)
    assert not repo.claim_job("j1", "node-b", now=205.0, lease_until=215.0)  # held
    assert repo.claimable_jobs(now=205.0) == []
    assert repo.update_job_item("j1", 0, "node-a", status="done", audio_s=12.5, escalations=1)
    assert not repo.update_job_item("j1", 1, "node-b", status="done")  # not node-b's job
    assert repo.claimable_jobs(now=211.0) == ["j1"]  # node-a's claim ran out
    assert repo.claim_job("j1", "node-b", now=211.0, lease_until=221.0)
    assert not repo.update_job("j1", "node-a", lease_until=230.0)  # node-a, late, cannot renew
    assert not repo.update_job_item("j1", 1, "node-a", status="failed", error="late")
    assert repo.update_job("j1", "node-b", status="done", finished_at=220.0)
    job = repo.get_job("j1")
    assert job is not None and job["options"] == options and job["owner"] == "node-b" and job["status"] == "done"
    assert [j["job_id"] for j in repo.list_jobs()] == ["j1", "j0"]
    rows = repo.job_items(["j1", "j0"])
    assert [(i["seq"], i["name"], i["status"], i["audio_s"]) for i in rows] == [(0, "b", "done", 12.5), (1, "a", "pending", None)]
    assert repo.job_items([]) == [] and repo.get_job("nope") is None


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A process in its own session (so its whole group can be killed), its output in a log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait_for(self, text: str, timeout_s: float = 300.0) -> None:
        """Until ``text`` is in the process's output."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.tail()
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def spawn(name: str, args: list[str], log: Path, env: dict[str, str] | None = None, ready: str | None = None,
          timeout_s: float = 120.0) -> Proc:
    """Start ``args``; with ``ready``, wait until that text appears in its output (read as it comes)."""
    out = open(log, "wb")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    seen = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            out.write(line)
            out.flush()
            if ready and ready.encode() in line:
                seen.set()
        out.close()
        seen.set()  # ended: wait no longer

    threading.Thread(target=pump, daemon=True).start()
    p = Proc(name, proc, log)
    if ready and (not seen.wait(timeout_s) or proc.poll() is not None):
        p.kill()
        unavailable(f"{name} did not start: {p.tail()}")
    return p


@dataclass
class RayCluster:
    address: str
    head: Proc
    worker: Proc


def ray_node(name: str, root: Path, extra: list[str]) -> Proc:
    args = [str(BIN / "ray"), "start", *extra, "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
            f"--node-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--object-store-memory={200 * 1024 * 1024}", "--block"]
    env = {**os.environ, **HEALTH_CHECK, "RAY_USAGE_STATS_ENABLED": "0"}
    return spawn(name, args, root / f"{name}.log", env=env, ready=READY_MARK)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[RayCluster]:
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        unavailable(f"ray is not installed ({exc}): pip install 'calltone[scaleout]'")
    if not (BIN / "ray").exists():
        unavailable(f"no ray command beside {sys.executable}")
    root = Path(f"/tmp/ctray-{os.getpid()}")  # short: Ray's unix sockets live under it
    root.mkdir(exist_ok=True)
    port = free_port()
    head = ray_node("ray-head", tmp_path_factory.mktemp("ray"), ["--head", f"--port={port}", f"--temp-dir={root}",
                                                                 "--include-dashboard=false"])
    try:
        worker = ray_node("ray-worker", tmp_path_factory.mktemp("ray"), [f"--address=127.0.0.1:{port}"])
        try:
            yield RayCluster(f"127.0.0.1:{port}", head, worker)
        finally:
            worker.kill()
    finally:
        head.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def short_calls(tmp_path_factory) -> Path:
    """Six composed two-party calls, cut to CLIP_S seconds."""
    import soundfile as sf

    gen, folder = tmp_path_factory.mktemp("gen"), tmp_path_factory.mktemp("recordings")
    subprocess.run([sys.executable, str(require(MAKE_CALLS)), str(require(EMOTION_SPEECH)), str(gen), "--calls", "6",
                    "--lang", "en", "--seed", "5", "--telephony"], check=True, capture_output=True, timeout=180)
    for wav in sorted(gen.glob("*.wav")):
        audio, rate = sf.read(wav)
        sf.write(folder / wav.name, audio[: int(CLIP_S * rate)], rate)
    assert len(list(folder.glob("*.wav"))) == 6
    return folder


# --------------------------------------------------------------------------- calltone nodes


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Authorization": f"Bearer {QA}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Node:
    url: str
    proc: Proc

    def job(self, job_id: str) -> dict:
        status, raw = http("GET", f"{self.url}/v1/jobs/{job_id}")
        assert status == 200, raw
        return json.loads(raw)


def calltone_node(name: str, env: dict[str, str], logs: Path) -> Node:
    port = free_port()
    proc = spawn(name, [str(BIN / "calltone"), "serve", "--port", str(port)], logs / f"{name}.log", env=env)
    node = Node(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # readiness: the node answers (the job runner claims from start-up)
        assert proc.proc.poll() is None, proc.tail()
        try:
            if http("GET", f"{node.url}/healthz")[0] == 200:
                return node
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{name} did not answer: {proc.tail()}")


def watch(nodes: list[Node], job_id: str, until, seen: list[float], timeout_s: float = 600) -> dict:
    """Read the job through the live nodes until ``until(job)``; record every fraction read."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in nodes:
            job = node.job(job_id)
            seen.append(job["progress"]["fraction"])
            if until(job):
                return job
            assert job["status"] != "failed", job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there: {nodes[0].job(job_id)}\n{nodes[-1].proc.tail()}")


def done(n: int):
    return lambda job: job["progress"]["files_done"] >= n


def test_ray_job_survives_a_ray_node_and_a_calltone_node(ray_cluster: RayCluster, short_calls: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared-reports"
    env = {**os.environ, "CALLTONE_BATCH__ENGINE": "ray", "CALLTONE_BATCH__RAY_ADDRESS": ray_cluster.address,
           "CALLTONE_BATCH__REPORTS_DIR": str(shared), "CALLTONE_BATCH__LEASE_S": str(LEASE_S),
           "CALLTONE_SERVER__DATA_DIR": str(tmp_path / "data"), "CALLTONE_SERVER__RECORDINGS_DIR": str(short_calls),
           "CALLTONE_SERVER__TOKENS": json.dumps({QA: "qa:quinn"}), "RAY_USAGE_STATS_ENABLED": "0"}
    a = calltone_node("calltone-a", env, tmp_path)
    b: Node | None = None
    try:
        status, raw = http("POST", f"{a.url}/v1/jobs", json.dumps({"paths": ["."], "language": "en"}).encode())
        assert status == 202, raw
        job_id = json.loads(raw)["job_id"]
        seen: list[float] = []
        watch([a], job_id, lambda j: j["status"] == "running", seen)  # node a claimed it
        b = calltone_node("calltone-b", env, tmp_path)  # a second node, sharing the store and the reports
        a.proc.wait_for("2 of 2 Ray actor(s) ready")  # one actor on each Ray node, both with their models
        first = watch([a, b], job_id, done(1), seen)
        ray_cluster.worker.kill()  # a Ray node gone mid-job: its actor dies, its file goes to the other actor
        assert first["status"] == "running" and first["progress"]["files_done"] <= 2
        a.proc.wait_for("goes back to the queue")  # node a saw the actor die and handed its file to the other
        second = watch([a, b], job_id, done(2), seen)
        a.proc.kill()  # the calltone node running the job gone: b takes it over once a's claim runs out
        assert second["status"] == "running" and second["progress"]["files_done"] < 6
        kept = {r["file"]: report_of(shared, job_id, r) for r in second["results"]}
        final = watch([b], job_id, lambda j: j["status"] == "done", seen)
    finally:
        for node in (a, b):
            if node is not None:
                node.proc.kill()
    assert seen == sorted(seen) and seen[-1] == 1.0, seen  # progress read from the store only rose
    assert final["errors"] == [] and len(final["results"]) == 6 and final["engine"] == "ray"
    assert sorted(r["file"] for r in final["results"]) == sorted(p.name for p in short_calls.glob("*.wav"))
    for r in final["results"]:
        report = report_of(shared, job_id, r)
        assert report["call_id"] == r["call_id"] and report["segments"] and abs(report["duration_s"] - CLIP_S) < 0.1
        if r["file"] in kept:  # finished before node a died: not scored again
            assert report["scored_at"] == kept[r["file"]]["scored_at"]
    rerun = subprocess.run([str(BIN / "calltone"), "score", str(short_calls), "--engine", "ray", "--address",
                            ray_cluster.address, "--out", str(shared / job_id / "reports")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "6 recording(s) found, 6 already scored" in rerun.stderr and "0 to score" in rerun.stderr


def report_of(shared: Path, job_id: str, result: dict) -> dict:
    name = Path(result["report_json"]).name
    return json.loads((shared / job_id / "reports" / name).read_text(encoding="utf-8"))
