"""QA scoring jobs: ``POST /v1/jobs`` scores uploaded or server-side recordings in the
server's own runtime (the shared ASR worker, at background priority, so live calls
go first), writes the same report folder as ``calltone score`` and stores each call
(its events) so that it appears in ``/v1/calls``.

Jobs run one at a time, in order.  The job list is kept in memory: a job that was
queued or running when the server stopped is gone, the calls it finished are not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from calltone.batch.output import ReportDir
from calltone.batch.report import CallReport
from calltone.batch.scorer import ScoreOptions, ScoringError, report_names, score_recording
from calltone.events import call_id_from_name
from calltone.summary import compute_summary

log = logging.getLogger("calltone.server.jobs")


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
    current_fraction: float = Field(0.0, description="0-1, of the file being scored")
    audio_s_done: float = Field(0.0, description="seconds of audio scored")
    fraction: float = Field(0.0, description="0-1, of the whole job")


class Job(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"] = "queued"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    options: ScoreOptions
    progress: JobProgress
    results: list[JobResult] = Field(default_factory=list)
    errors: list[JobError] = Field(default_factory=list)
    index: str = Field(description="URL of the job's report index (index.html)")
    summary_csv: str


class JobRunner:
    """Queue of jobs, run one at a time on the server's runtime."""

    def __init__(self, services, root: Path) -> None:
        self.s = services
        self.root = root
        self.jobs: dict[str, Job] = {}
        self._inputs: dict[str, tuple[list[Path], bool]] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def submit(self, files: list[Path], options: ScoreOptions, uploaded: bool, job_id: str | None = None) -> Job:
        job_id = job_id or uuid.uuid4().hex[:12]
        base = f"/v1/jobs/{job_id}/reports"
        job = Job(job_id=job_id, created_at=round(time.time(), 3), options=options,
                  progress=JobProgress(files_total=len(files)), index=f"{base}/index.html", summary_csv=f"{base}/summary.csv")
        self.jobs[job_id] = job
        self._inputs[job_id] = (files, uploaded)
        self._queue.put_nowait(job_id)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return job

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            job_id = await self._queue.get()
            job = self.jobs[job_id]
            try:
                await self._run_job(job)
                job.status = "done"
            except asyncio.CancelledError:
                job.status = "failed"
                raise
            except Exception as exc:  # the runner must survive a broken job
                log.exception("job %s failed", job_id)
                job.status = "failed"
                job.errors.append(JobError(file="", error=f"{type(exc).__name__}: {exc}"))
            finally:
                job.finished_at = round(time.time(), 3)
                _, uploaded = self._inputs.pop(job_id, ([], False))
                if uploaded and not self.s.settings.privacy.keep_audio:
                    shutil.rmtree(self.dir(job_id) / "input", ignore_errors=True)

    async def _run_job(self, job: Job) -> None:
        while self.s.runtime is None:  # the speech models are still loading
            await asyncio.sleep(0.5)
        job.status, job.started_at = "running", round(time.time(), 3)
        files, _ = self._inputs[job.job_id]
        out = ReportDir(self.dir(job.job_id) / "reports")
        names = report_names(files)
        p = job.progress
        for k, path in enumerate(files):
            p.current, p.current_fraction = path.name, 0.0

            def progress(done_s: float, total_s: float) -> None:
                p.current_fraction = round(min(1.0, done_s / total_s), 3) if total_s else 0.0
                p.fraction = round((p.files_done + p.current_fraction) / max(1, p.files_total), 3)

            call_id = call_id_from_name(f"{names[path]}-{job.job_id[:6]}")
            try:
                report = await score_recording(path, self.s.runtime, job.options, call_id=call_id, progress=progress,
                                               shared=True)
            except ScoringError as exc:
                job.errors.append(JobError(file=path.name, error=str(exc)))
            else:
                await asyncio.to_thread(out.save, names[path], report)
                await self._store(job, report, path)
                base = f"/v1/jobs/{job.job_id}/reports/{names[path]}"
                job.results.append(JobResult(file=path.name, call_id=call_id, report=f"{base}.html", report_json=f"{base}.json",
                                             duration_s=report.duration_s, language=report.language,
                                             peak_grade=report.metrics.peak_grade, escalations=report.metrics.escalations))
                p.audio_s_done = round(p.audio_s_done + report.duration_s, 3)
            p.files_done = k + 1
            p.fraction = round(p.files_done / max(1, p.files_total), 3)
        p.current = None
        await asyncio.to_thread(out.write_index, [(e.file, e.error) for e in job.errors])

    async def _store(self, job: Job, report: CallReport, path: Path) -> None:
        """The scored call as a stored call (status ended, metadata.source 'batch'): GET /v1/calls lists it."""
        now = time.time()
        call_id = report.call_id
        bodies = [json.loads(e.model_dump_json()) for e in report.events]
        for seq, body in enumerate(bodies, 1):
            body["seq"], body["server_time"] = seq, round(now, 3)
        ended = next((b for b in bodies if b["type"] == "call.ended"), None)
        summary = compute_summary([b for b in bodies if b["type"] != "call.ended"], report.duration_s,
                                  {**(ended or {}).get("summary", {}), "end_reason": "scored"})
        if ended is not None:
            ended["summary"] = summary
        call = {"call_id": call_id, "status": "ended", "agent_id": None, "language": report.language,
                "metadata": {"source": "batch", "job_id": job.job_id, "file": path.name, "mono": report.mono},
                "roles": list(report.channels), "started_at": now, "ended_at": now, "duration_s": report.duration_s,
                "escalations": report.metrics.escalations, "summary": summary, "updated_at": now}

        def write(repo) -> None:  # one transaction (the store's writer wraps each write in one)
            repo.upsert_call(call)
            for b in bodies:
                repo.append_event(call_id, b["seq"], b["type"], b["t"], b["server_time"], json.dumps(b, ensure_ascii=False))

        await self.s.store.write(write)
