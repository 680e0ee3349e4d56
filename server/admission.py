"""Admission control: how many customer calls this node takes, and what it gives up first under load.

As the load grows, the node degrades in this order:

1. **Partials go first.** While a final decode waits for an ASR decoder (the ASR is behind), or more
   calls are live than the capacity (calls in progress that resumed here), channels queue no partial
   decodes (``ChannelTranscriber`` asks :meth:`Admission.allow_partial`); the voice is still graded and
   every final is decoded.  (A partial already queued that waits past ``asr.partial_lag_drop_s`` is
   skipped by the ASR worker itself.)
2. **New calls are refused** with close 1013 and a reason (``/readyz`` answers 503 meanwhile, so a
   load balancer sends them to another node): ``at_capacity`` once ``server.max_calls`` calls are
   live or opening, ``asr_lagging`` while the ASR queue's oldest job has waited ``server.max_asr_lag_s``.
3. **Finals are never dropped**, only delayed.

The capacity is ``server.max_calls``, or :data:`CALLS_PER_ASR_WORKER` per ASR worker (one per core
on cpu: 12 calls on a 2-core node); 0 is no limit.  Only calls streamed to this node count: scoring
jobs decode at background priority and do not.  A call in progress (its id is stored and has not
ended: the producer reconnects after a drop, a restart or a dead node) is never refused for load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from calltone.runtime import asr_workers

if TYPE_CHECKING:
    from calltone.server.calls import Services
    from calltone.settings import Settings

CALLS_PER_ASR_WORKER = 6  # 12 calls on a 2-core node: bench/live.py measured final p95 1.16 s at 12, 1.45 s at 20, 2.88 s at 24

OverloadCode = Literal["at_capacity", "asr_lagging"]


@dataclass(frozen=True)
class AdmissionPolicy:
    """The limits, from the settings."""

    capacity: int | None  # live calls this node takes; None: no limit
    max_asr_lag_s: float  # 0: no lag guard

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionPolicy:
        s = settings.server
        capacity = CALLS_PER_ASR_WORKER * asr_workers(settings.asr) if s.max_calls is None else s.max_calls or None
        return cls(capacity, s.max_asr_lag_s)


@dataclass(frozen=True)
class Load:
    """This node's load now."""

    calls: int  # customer calls live or being opened here
    asr_lag_s: float  # age of the ASR queue's oldest job
    queued_finals: int  # final decodes waiting for a decoder


@dataclass(frozen=True)
class Overload:
    """Why a new call is refused now (``code`` is the error code and close reason; close 1013)."""

    code: OverloadCode
    message: str


class Admission:
    """This node's admission control: reads the live calls and the ASR queue, decides, counts what it refuses and
    sheds (one per app, ``Services.admission``)."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.policy = AdmissionPolicy.from_settings(services.settings)

    def load(self) -> Load:
        runtime = self.s.runtime
        if runtime is None:
            return Load(self.s.registry.occupied, 0.0, 0)
        asr = runtime.asr.snapshot()
        return Load(self.s.registry.occupied, asr.lag_s, asr.queued_finals)

    @property
    def headroom(self) -> float:
        """Calls this node may still take (capacity minus live calls; negative when resumed calls took it past
        its capacity; +inf without a limit)."""
        cap = self.policy.capacity
        return math.inf if cap is None else float(cap - self.s.registry.occupied)

    def overload(self, load: Load) -> Overload | None:
        """Why a new call joining ``load`` would be refused, or None when it is taken."""
        cap, max_lag = self.policy.capacity, self.policy.max_asr_lag_s
        if cap is not None and load.calls >= cap:
            return Overload("at_capacity", f"this node is at capacity ({load.calls} of {cap} calls live); "
                                           "connect again (to another node behind the load balancer)")
        if max_lag > 0 and load.asr_lag_s >= max_lag:
            return Overload("asr_lagging", f"this node's speech recognition is {load.asr_lag_s:.1f} s behind "
                                           f"(limit {max_lag:g} s); connect again (to another node)")
        return None

    def refuse(self, overload: Overload) -> None:
        """Count a refused new call."""
        self.s.metrics.calls_refused.labels(overload.code).inc()

    def allow_partial(self) -> bool:
        """Whether a channel may queue a partial decode now (:class:`calltone.speech.streaming.PartialGate`): not
        while a final waits for a decoder, nor over capacity.  A partial not allowed is counted as shed."""
        load = self.load()
        cap = self.policy.capacity
        shed = load.queued_finals > 0 or (cap is not None and load.calls > cap)
        if shed:
            self.s.metrics.partials_shed.inc()
        return not shed
