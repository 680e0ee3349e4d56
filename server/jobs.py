"""QA scoring jobs: ``POST /v1/jobs`` scores uploaded or server-side recordings, writes the same report folder
as ``calltone score`` and stores each call (its events) so that it appears in ``/v1/calls``.

A job and its items (one per recording) are rows in the store (``jobs``, ``job_items``), not memory: any node
reads a job's progress from them, and a job outlives the node that ran it.  Every node's :class:`JobRunner`
claims unfinished jobs that nobody holds (one at a time), keeps its claim alive while it scores
(``batch.lease_s``), and on a job whose node died scores only the items that are not finished.  Reports and
uploads live under ``batch.reports_dir`` (default ``<data_dir>/jobs``), which every node must share.

Where a node scores is ``batch.engine``: ``local`` in the server's own runtime (its one ASR thread, at
background priority, so live calls go first; docs/batch.md), ``ray`` on Ray actors
(:mod:`calltone.batch.engine`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Literal

from pydantic import BaseModel, Field

from calltone.batch.engine import EnginePlan, open_engine
from calltone.batch.output import ReportDir
from calltone.batch.report import CallReport
from calltone.batch.scorer import ScoreOptions, Scored, failed, report_names, score_recording
from calltone.events import call_id_from_name
from calltone.server.record import CallRecord, Op
from calltone.server.tasks import cancel_and_wait

if TYPE_CHECKING:
    from calltone.server.calls import Services
    from calltone.server.store import Repository

log = logging.getLogger("calltone.server.jobs")

FINISHED = ("done", "failed")  # an item's final statuses


class JobResult(BaseModel):
    file: str
    call_id: str
    report: str = Field(description="URL of the call's HTML report")
    report_json: str
    duration_s: float
    language: str | None = None
    peak_grade: str | None = None
    escalations: int = 0


class JobError(BaseModel):
    file: str
    error: str


class JobProgress(BaseModel):
    files_total: int
    files_done: int = 0
    current: str | None = None
    current_fraction: float = Field(0.0, description="0-1, of the file being scored (known to the node scoring it)")
    audio_s_done: float = Field(0.0, description="seconds of audio scored")
    fraction: float = Field(0.0, description="0-1, of the whole job")


class Job(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"] = "queued"
    engine: str = "local"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    options: ScoreOptions
    progress: JobProgress
    results: list[JobResult] = Field(default_factory=list)
    errors: list[JobError] = Field(default_factory=list)
    index: str = Field(description="URL of the job's report index (index.html)")
    summary_csv: str


@dataclass
class LiveFile:
    """What only the node scoring a job knows: the file being scored and how far it got."""

    name: str | None = None
    fraction: float = 0.0


def job_view(row: dict, items: list[dict], live: LiveFile | None = None) -> Job:
    """A job as the API shows it, from its rows (and the scoring node's live file, on that node)."""
    done = [i for i in items if i["status"] == "done"]
    errors = [JobError(file=Path(i["file"]).name, error=i["error"] or "failed") for i in items if i["status"] == "failed"]
    finished = sum(1 for i in items if i["status"] in FINISHED)
    current = live.fraction if live is not None and live.name else 0.0
    base = f"/v1/jobs/{row['job_id']}/reports"
    progress = JobProgress(files_total=len(items), files_done=finished, current=live.name if live else None,
                           current_fraction=current, audio_s_done=round(sum(i["audio_s"] or 0.0 for i in done), 3),
                           fraction=round(min(1.0, (finished + current) / max(1, len(items))), 3))
    results = [JobResult(file=Path(i["file"]).name, call_id=i["call_id"], report=i["report"], report_json=i["report_json"],
                         duration_s=i["audio_s"], language=i["language"], peak_grade=i["peak_grade"],
                         escalations=i["escalations"] or 0) for i in done]
    return Job(job_id=row["job_id"], status=row["status"], engine=row["engine"], created_at=row["created_at"],
               started_at=row["started_at"], finished_at=row["finished_at"], options=ScoreOptions.model_validate(row["options"]),
               progress=progress, results=results,
               errors=errors + ([JobError(file="", error=row["error"])] if row["error"] else []),
               index=f"{base}/index.html", summary_csv=f"{base}/summary.csv")


class LostClaim(Exception):
    """Another node took the job over (this one's claim ran out): stop scoring it."""


class JobRunner:
    """This node's share of the jobs in the store: claims one unfinished job at a time and scores it."""

    def __init__(self, services: "Services", root: Path) -> None:
        self.s = services
        self.root = Path(services.settings.batch.reports_dir or root)
        self.node = uuid.uuid4().hex  # this runner's name on the jobs it claims
        self.lease_s = services.settings.batch.lease_s
        self._live: dict[str, LiveFile] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def start(self) -> None:
        """Start claiming jobs (the server's start-up)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    # -- reads and submissions (any node) -----------------------------------------------------
    async def submit(self, files: list[Path], options: ScoreOptions, uploaded: bool, job_id: str | None = None) -> Job:
        """Store the job (queued, unclaimed: the first free node takes it, usually this one)."""
        job_id = job_id or uuid.uuid4().hex[:12]
        names = report_names(files)
        row = {"job_id": job_id, "status": "queued", "engine": self.s.settings.batch.engine,
               "options": options.model_dump(), "uploaded": uploaded, "created_at": round(time.time(), 3)}
        items = [{"seq": k, "file": str(f), "name": names[f], "status": "pending",
                  "call_id": call_id_from_name(f"{names[f]}-{job_id[:6]}")} for k, f in enumerate(files)]
        await self.s.store.write(lambda r: r.insert_job(row, items))
        self._wake.set()
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: str) -> Job | None:
        row, items = await self.s.store.read(lambda r: (r.get_job(job_id), r.job_items([job_id])))
        return job_view(row, items, self._live.get(job_id)) if row is not None else None

    async def list_jobs(self, limit: int = 100) -> list[Job]:
        """Newest first."""
        def read(r: "Repository") -> tuple[list[dict], list[dict]]:
            rows = r.list_jobs(limit)
            return rows, r.job_items([j["job_id"] for j in rows])

        rows, items = await self.s.store.read(read)
        return [job_view(j, [i for i in items if i["job_id"] == j["job_id"]], self._live.get(j["job_id"])) for j in rows]

    # -- claiming and running -----------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            job_id = await self._next()
            run = asyncio.ensure_future(self._run(job_id))
            keep = asyncio.ensure_future(self._keep_claim(job_id, run))
            try:
                await asyncio.gather(run, return_exceptions=True)
            finally:
                keep.cancel()
                run.cancel()
                self._live.pop(job_id, None)

    async def _next(self) -> str:
        """Wait for a job this node could claim, and claim it."""
        while True:
            self._wake.clear()
            now = time.time()
            try:
                for job_id in await self.s.store.read(lambda r: r.claimable_jobs(now)):
                    if await self.s.store.write(lambda r, j=job_id: r.claim_job(j, self.node, now, now + self.lease_s)):
                        return job_id
            except Exception as exc:  # noqa: BLE001 - the store may be down: try again later
                log.warning("cannot claim jobs: %s", exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.lease_s / 3)

    async def _keep_claim(self, job_id: str, run: asyncio.Task) -> None:
        """Renew the claim every third of the lease; cancel the run once another node holds the job."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            with suppress(Exception):  # a failed renewal is retried; the lease has two more thirds
                if not await self._set(job_id, lease_until=time.time() + self.lease_s):
                    log.warning("job %s: another node took it over; this node stops scoring it", job_id)
                    run.cancel()
                    return

    async def _set(self, job_id: str, **fields: object) -> bool:
        return await self.s.store.write(lambda r: r.update_job(job_id, self.node, updated_at=time.time(), **fields))

    async def _run(self, job_id: str) -> None:
        try:
            await self._run_job(job_id)
        except LostClaim:
            log.warning("job %s: another node took it over", job_id)
        except Exception as exc:  # the runner must survive a broken job
            log.exception("job %s failed", job_id)
            await self._set(job_id, status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=round(time.time(), 3))

    async def _run_job(self, job_id: str) -> None:
        row, items = await self.s.store.read(lambda r: (r.get_job(job_id), r.job_items([job_id])))
        engine = self.s.settings.batch.engine
        if not await self._set(job_id, status="running", engine=engine, started_at=row["started_at"] or round(time.time(), 3)):
            raise LostClaim(job_id)
        options = ScoreOptions.model_validate(row["options"])
        todo = [i for i in items if i["status"] not in FINISHED]  # a dead node's 'running' items are scored again
        out = ReportDir(self.dir(job_id) / "reports")
        source = self._score_here(job_id, todo, options) if engine == "local" else self._score_on_engine(job_id, todo, options)
        async for item, scored in source:
            await self._finish(job_id, item, scored, out)
        items = await self.s.store.read(lambda r: r.job_items([job_id]))
        failures = [(Path(i["file"]).name, i["error"] or "failed") for i in items if i["status"] == "failed"]
        await asyncio.to_thread(out.write_index, failures)
        if not await self._set(job_id, status="done", finished_at=round(time.time(), 3)):
            raise LostClaim(job_id)
        if row["uploaded"] and not self.s.settings.privacy.keep_audio:
            shutil.rmtree(self.dir(job_id) / "input", ignore_errors=True)

    async def _score_here(self, job_id: str, todo: list[dict], options: ScoreOptions) -> AsyncIterator[tuple[dict, Scored]]:
        """The local engine: one file after another in the server's runtime, live calls first."""
        while self.s.runtime is None:  # the speech models are still loading
            await asyncio.sleep(0.5)
        live = self._live[job_id] = LiveFile()
        for item in todo:
            path = Path(item["file"])
            live.name, live.fraction = path.name, 0.0
            await self._set_item(job_id, item, status="running", started_at=round(time.time(), 3))

            def progress(done_s: float, total_s: float) -> None:
                live.fraction = round(min(1.0, done_s / total_s), 3) if total_s else 0.0

            try:
                report = await score_recording(path, self.s.runtime, options, call_id=item["call_id"], progress=progress,
                                               shared=True)
            except Exception as exc:  # noqa: BLE001 - one file's failure is that file's error
                yield item, failed(path, exc)
            else:
                yield item, Scored(path, report=report)
        live.name = None

    async def _score_on_engine(self, job_id: str, todo: list[dict],
                               options: ScoreOptions) -> AsyncIterator[tuple[dict, Scored]]:
        """The ray engine: the job's files on the cluster's actors, results as they come."""
        by_path = {Path(i["file"]): i for i in todo}
        if not by_path:
            return
        started = round(time.time(), 3)
        for item in todo:
            await self._set_item(job_id, item, status="running", started_at=started)
        plan = EnginePlan.from_settings(self.s.settings.batch)
        engine = await asyncio.to_thread(open_engine, plan, self.s.settings, len(by_path))
        try:
            results = engine.score(list(by_path), options, {p: i["call_id"] for p, i in by_path.items()})
            while (scored := await asyncio.to_thread(next, results, None)) is not None:
                yield by_path[scored.path], scored
        finally:
            await asyncio.to_thread(engine.close)

    async def _set_item(self, job_id: str, item: dict, **fields: object) -> None:
        if not await self.s.store.write(lambda r: r.update_job_item(job_id, item["seq"], self.node,
                                                                    updated_at=time.time(), **fields)):
            raise LostClaim(job_id)

    async def _finish(self, job_id: str, item: dict, scored: Scored, out: ReportDir) -> None:
        """A file's result: its reports, its call and events, its item done (one transaction), or its error."""
        now = round(time.time(), 3)
        if scored.report is None:
            await self._set_item(job_id, item, status="failed", error=scored.error, finished_at=now)
            return
        report = scored.report.named(self.shown(job_id, Path(item["file"])))
        await asyncio.to_thread(out.save, item["name"], report)
        base = f"/v1/jobs/{job_id}/reports/{item['name']}"
        fields = {"status": "done", "report": f"{base}.html", "report_json": f"{base}.json", "audio_s": report.duration_s,
                  "language": report.language, "peak_grade": report.summary.peak_grade,
                  "escalations": report.summary.escalations, "finished_at": now, "updated_at": now}
        ops = stored_call(job_id, report, now)

        def write(repo: "Repository") -> bool:  # one transaction: a call stored is an item done, and back
            if not repo.update_job_item(job_id, item["seq"], self.node, **fields):
                return False
            for op in ops:
                op(repo)
            return True

        if not await self.s.store.write(write):
            raise LostClaim(job_id)

    def shown(self, job_id: str, path: Path) -> str:
        """A recording as the user named it: relative to the job's uploads or to ``server.recordings_dir``."""
        roots = [self.dir(job_id) / "input"] + [Path(d) for d in [self.s.settings.server.recordings_dir] if d]
        path = path.resolve()
        for root in (r.resolve() for r in roots):
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return path.name


def stored_call(job_id: str, report: CallReport, now: float) -> list[Op]:
    """The writes that store a scored call as live calls are stored (server/record.py: seqs, alert rows, the
    summary and KPI columns at call.ended): status ended, metadata.source 'batch' (GET /v1/calls lists it)."""
    metadata = {"source": "batch", "job_id": job_id, "file": report.source, "mono": report.mono}
    call = {"call_id": report.call_id, "status": "ended", "agent_id": None, "language": report.language,
            "metadata": metadata, "roles": list(report.channels), "started_at": now, "updated_at": now}
    record = CallRecord(report.call_id, None, metadata)
    ops: list[Op] = [lambda r: r.upsert_call(call)]
    for event in report.events:
        ev = event.model_copy(deep=True)
        if ev.type == "call.ended":
            ev.summary = {**ev.summary, "end_reason": "scored"}
        record.stamp(ev, now)
        ops.extend(record.record(ev, now).ops)
    return ops
