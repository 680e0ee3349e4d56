"""Where recordings are scored: one interface, two engines.

* ``local``: :class:`~calltone.batch.scorer.ScoringPool`, worker processes on this machine (the default);
* ``ray``: :class:`~calltone.batch.ray_engine.RayEngine`, Ray actors anywhere in a Ray cluster (the
  ``scaleout`` extra; Ray is imported only when this engine is opened).

Both load the models once per worker (process or actor) and score each file with
:func:`calltone.batch.scorer.score_recording`; both yield a :class:`~calltone.batch.scorer.Scored` per file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Mapping, Protocol

from calltone.batch.scorer import ScoreOptions, Scored, ScoringPool, plan_workers

if TYPE_CHECKING:
    from calltone.settings import BatchSettings, Settings

EngineKind = Literal["local", "ray"]


class ScoringEngine(Protocol):
    workers: int
    description: str  # for people: how many workers, where

    def score(self, files: list[Path], options: ScoreOptions,
              call_ids: Mapping[Path, str] | None = None) -> Iterator[Scored]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EnginePlan:
    """Which engine, and how many workers where: ``workers`` None sizes it to the cores (local) or the
    cluster's CPUs (ray), never more than files; ``address`` is the Ray cluster ('' = Ray's own default)."""

    kind: EngineKind = "local"
    workers: int | None = None
    address: str = ""

    @classmethod
    def from_settings(cls, batch: "BatchSettings") -> "EnginePlan":
        return cls(kind=batch.engine, workers=batch.ray_workers if batch.engine == "ray" else None,
                   address=batch.ray_address)


def open_engine(plan: EnginePlan, settings: "Settings", n_files: int) -> ScoringEngine:
    """Start the plan's workers (they load their models in the background)."""
    if plan.kind == "ray":
        try:
            from calltone.batch.ray_engine import RayEngine
        except ImportError as exc:
            raise RuntimeError(f"the ray engine needs Ray ({exc}): pip install 'calltone[scaleout]'") from exc
        return RayEngine(settings, n_files, workers=plan.workers, address=plan.address)
    workers, threads = plan_workers(n_files, plan.workers)
    return ScoringPool(settings, workers, threads)
