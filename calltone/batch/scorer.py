"""Scoring recordings: files in, :class:`CallReport` out, with the live pipeline.

:func:`score_recording` runs one recording through a batch-mode
:class:`calltone.pipeline.CallPipeline` on a :class:`calltone.runtime.Runtime`
(the CLI's worker processes, the Ray engine's actors and the server's job runner all call it).
:class:`ScoringPool` (the ``local`` engine, :mod:`calltone.batch.engine`) spreads files over worker
processes, each loading its own models once, sized to the cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping

from pydantic import BaseModel, Field

from calltone.batch.report import CallReport, build_report
from calltone.events import Event, call_id_from_name
from calltone.pii import mask_transcript
from calltone.speech.decoding import RECORDING

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


class ScoreOptions(BaseModel):
    customer_channel: Literal[0, 1] = Field(0, description="which channel of a stereo recording is the customer")
    mono: bool = Field(False, description="mix the channels and grade them as one speaker")
    language: str = Field("auto", description="zh, en or auto")
    transcript: bool = Field(True, description="False: grade the voice only, no transcription")


class ScoringError(Exception):
    """A recording could not be scored; the message says why (bad audio, ...)."""


def find_recordings(paths: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Audio files named or found (recursively) in folders, and the paths that were neither."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            missing.append((str(p), "no such file or folder"))
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, missing


def report_names(files: list[Path]) -> dict[Path, str]:
    """A report name per file: its stem, made unique with its folder (then a number) on clashes."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    names: dict[Path, str] = {}
    used: set[str] = set()
    for f in files:
        name = f.stem if stems[f.stem] == 1 else f"{f.parent.name}_{f.stem}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names[f] = name
    return names


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


async def score_recording(path: Path, runtime, options: ScoreOptions, call_id: str | None = None,
                          progress: Callable[[float, float], None] | None = None, shared: bool = False) -> CallReport:
    """Score one recording; ``progress(done_s, total_s)`` follows the audio fed.  ``shared``: the runtime
    also serves live calls (the server), so the feed holds back for them.  Raises ScoringError."""
    from calltone.pipeline import CallPipeline, PipelineOptions, feed_recording
    from calltone.speech.audio import AudioError, load_recording

    # channel 0 is the customer, 1 the agent (swapped below for customer_channel=1); a mono file: 'customer'
    started = time.time()
    loop = asyncio.get_running_loop()
    try:  # decoding a file is blocking work: the CPU pool, not the event loop
        rec = await loop.run_in_executor(runtime.cpu, lambda: load_recording(path, mono=options.mono))
    except AudioError as exc:
        raise ScoringError(str(exc)) from exc
    audio = dict(rec.channels)
    mono = len(audio) == 1
    channels = {"customer": 0} if mono else {"customer": 0, "agent": 1}
    if not mono and options.customer_channel == 1:
        audio = {"customer": audio["agent"], "agent": audio["customer"]}
        channels = {"customer": 1, "agent": 0}
    pipe_options = PipelineOptions(language=options.language, roles=list(audio), transcribe=options.transcript,
                                   decode=RECORDING, metadata={"source": str(path), "mono": mono})
    events: list[Event] = []
    mask = runtime.settings.privacy.mask_pii

    def collect(e: Event) -> None:
        if mask and e.type == "transcript.final":
            mask_transcript(e)
        events.append(e)

    call_id = call_id or call_id_from_name(path.stem)
    pipe = CallPipeline(call_id, runtime, pipe_options, collect)
    duration = rec.duration_s
    await feed_recording(pipe, audio, block_s=0.5, progress=(lambda s: progress(s, duration)) if progress else None,
                         hold_back=shared)
    digest = await loop.run_in_executor(runtime.cpu, sha256_of, path)
    report = build_report(call_id, str(path), events, pipe.speech(), duration, channels, mono=mono,
                          scored_at=round(time.time(), 3), source_sha256=digest, options=options.model_dump())
    report.scoring_s = round(time.time() - started, 3)
    return report


# -- worker processes -------------------------------------------------------------------------
_worker_runtime = None


def _init_worker(settings_json: str, threads: int) -> None:
    global _worker_runtime
    from calltone.runtime import Runtime
    from calltone.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    settings.asr.cpu_threads = threads
    settings.asr.workers = 1  # this process is the scoring pool's worker: its decoder runs in it
    _worker_runtime = Runtime.create(settings, cpu_workers=threads)


def _score_in_worker(path: str, options_json: str, call_id: str | None = None) -> str:
    """One recording on this process's runtime (``_init_worker`` made it): the report as JSON."""
    options = ScoreOptions.model_validate_json(options_json)
    report = asyncio.run(score_recording(Path(path), _worker_runtime, options, call_id=call_id))
    return report.model_dump_json()


@dataclass
class Scored:
    path: Path
    report: CallReport | None = None
    error: str | None = None


def failed(path: Path, exc: BaseException) -> Scored:
    """A file that could not be scored: a ScoringError's own message, else the exception's type and message."""
    if isinstance(exc, ScoringError):
        return Scored(path, error=str(exc))
    return Scored(path, error=f"{type(exc).__name__}: {exc}")


def plan_workers(n_files: int, workers: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(processes, threads each): one process per core by default, never more than files."""
    cores = cores or os.cpu_count() or 1
    n = max(1, min(workers or cores, max(1, n_files)))
    return n, max(1, cores // n)


class ScoringPool:
    """Worker processes, each with its own models (loaded once), scoring one file at a time."""

    def __init__(self, settings, workers: int, threads: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # no inherited threads or model state
        # each worker's Runtime.create caps numpy's BLAS at settings.blas_threads (1): idle BLAS threads spin
        self.workers = workers
        self.description = f"{workers} worker process(es) x {threads} thread(s)"
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(settings.model_dump_json(), threads))

    def score(self, files: list[Path], options: ScoreOptions,
              call_ids: Mapping[Path, str] | None = None) -> Iterator[Scored]:
        """Yield each file's result as it completes (largest files start first); ``call_ids``: a call id per file
        (default: from its name)."""
        from concurrent.futures import as_completed

        opts = options.model_dump_json()
        ids = call_ids or {}
        futures: dict[Future, Path] = {}
        for f in sorted(files, key=lambda p: -p.stat().st_size):
            futures[self._pool.submit(_score_in_worker, str(f), opts, ids.get(f))] = f
        for fut in as_completed(futures):
            path = futures[fut]
            try:
                yield Scored(path, report=CallReport.model_validate_json(fut.result()))
            except Exception as exc:  # a crash on one file must not stop the others
                yield failed(path, exc)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
