"""The ``ray`` engine: one Ray actor per worker slot (one CPU each), each loading the models once
(:func:`calltone.batch.scorer._init_worker`) and scoring one file at a time with the same function as the
local worker processes (:func:`calltone.batch.scorer._score_in_worker`).

Files are handed out one at a time to actors that have loaded their models and are idle (largest file
first), so a slow node takes fewer; an actor that cannot be placed (its node died before it started, no CPU
left) gets no work, the others go on.  When an actor dies (its node removed or crashed, its process killed)
the file it was scoring goes back to the queue for the actors left, at most :data:`MAX_ATTEMPTS` times per
file; the dead actor is not replaced.  Every file named is read by the actors, so it must be at the same
path on every node (a shared folder).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import ray
from ray.exceptions import RayActorError, RayTaskError

from calltone.batch import scorer
from calltone.batch.report import CallReport
from calltone.batch.scorer import ScoreOptions, Scored, failed

if TYPE_CHECKING:
    from calltone.settings import Settings

log = logging.getLogger("calltone.batch.ray")

MAX_ATTEMPTS = 3  # a file whose actor died this often (it may be what kills them) is reported failed
NAMESPACE = "calltone"


@ray.remote(num_cpus=1, max_restarts=0)
class ScoringActor:
    """One worker slot: its own runtime (models loaded once), one CTranslate2 thread."""

    def __init__(self, settings_json: str) -> None:
        scorer._init_worker(settings_json, 1)

    def ready(self) -> bool:
        return True

    def score(self, path: str, options_json: str, call_id: str | None) -> str:
        return scorer._score_in_worker(path, options_json, call_id)


@dataclass
class _Dispatch:
    """One ``score`` call's state: files waiting, files being scored (by their result's ref), tries per file."""

    waiting: deque[Path]
    running: dict["ray.ObjectRef", tuple["ray.actor.ActorHandle", Path]] = field(default_factory=dict)
    attempts: Counter[Path] = field(default_factory=Counter)


class RayEngine:
    """Scoring actors in a Ray cluster (connects to it, or starts a local one: see ``address``)."""

    def __init__(self, settings: "Settings", n_files: int, workers: int | None = None, address: str = "") -> None:
        ray.init(address=address or None, namespace=NAMESPACE, ignore_reinit_error=True, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(workers or cpus, max(1, n_files)))
        self.description = f"{self.workers} Ray actor(s) on a cluster of {cpus} CPU(s)"
        settings_json = settings.model_dump_json()
        self._actors = [ScoringActor.remote(settings_json) for _ in range(self.workers)]
        self._starting = {actor.ready.remote(): actor for actor in self._actors}  # models still loading
        self._idle: list["ray.actor.ActorHandle"] = []

    def score(self, files: list[Path], options: ScoreOptions,
              call_ids: Mapping[Path, str] | None = None) -> Iterator[Scored]:
        """Yield each file's result as it completes."""
        opts, ids = options.model_dump_json(), call_ids or {}
        d = _Dispatch(deque(sorted(files, key=lambda p: -p.stat().st_size)))
        while d.waiting or d.running:
            while d.waiting and self._idle:
                actor, path = self._idle.pop(), d.waiting.popleft()
                d.attempts[path] += 1
                d.running[actor.score.remote(str(path), opts, ids.get(path))] = (actor, path)
            if not d.running and not self._starting:
                yield from (Scored(p, error="no Ray scoring actor left (their nodes are gone)") for p in d.waiting)
                return
            (ref,), _ = ray.wait([*d.running, *self._starting], num_returns=1)
            if ref in self._starting:
                self._started(ref)
                continue
            done = self._collect(d, ref)
            if done is not None:
                yield done

    def _started(self, ref: "ray.ObjectRef") -> None:
        """An actor has its models (it becomes idle), or it died starting."""
        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except RayActorError:
            self._actors.remove(actor)
        else:
            self._idle.append(actor)
        log.info("%d of %d Ray actor(s) ready", len(self._actors) - len(self._starting), len(self._actors))

    def _collect(self, d: _Dispatch, ref: "ray.ObjectRef") -> Scored | None:
        """The finished task's result; None when its actor died and the file went back to the queue."""
        actor, path = d.running.pop(ref)
        try:
            report = CallReport.model_validate_json(ray.get(ref))
        except RayActorError as exc:  # the actor (its node) is gone: not the file's fault
            self._actors.remove(actor)
            if d.attempts[path] >= MAX_ATTEMPTS:
                return Scored(path, error=f"its Ray actor died {d.attempts[path]} times: {exc}")
            log.warning("the Ray actor scoring %s died (%d actor(s) left): the file goes back to the queue",
                        path.name, len(self._actors))
            d.waiting.appendleft(path)
            return None
        except RayTaskError as exc:  # the scoring raised: the same message as the local engine's
            self._idle.append(actor)
            return failed(path, exc.cause if exc.cause is not None else exc)
        self._idle.append(actor)
        return Scored(path, report=report)

    def close(self) -> None:
        """End the actors (the connection to the cluster stays: a server runs more jobs)."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors.clear()
        self._starting.clear()
        self._idle.clear()
