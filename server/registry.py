"""The calls being streamed right now: opening (new or resumed) and finishing them.

Which node may stream a call is :mod:`calltone.server.ownership`'s: one node (``bus_url`` unset) or a lease
per call in Redis, so that a second producer is refused on every node and a call whose node died is
resumed on any other."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from calltone.server.calls import LiveCall
from calltone.server.ownership import LeaseLost, OwnershipUnavailable, create_ownership
from calltone.server.protocol import ProtocolError
from calltone.server.record import SUMMARY_TYPES

if TYPE_CHECKING:
    from calltone.pipeline import PipelineOptions
    from calltone.server.calls import Services

log = logging.getLogger("calltone.server.registry")


class CallRegistry:
    """The calls being streamed right now on this node (at most one producer each, on all nodes)."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.live: dict[str, LiveCall] = {}
        self._opening: set[str] = set()
        self.draining = False
        self.ownership = create_ownership(services.settings.server, services.store, self._lost)
        self._stopping: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self.live)

    @property
    def occupied(self) -> int:
        """Calls live or being opened on this node (what admission control counts)."""
        return len(self.live) + len(self._opening)

    async def start(self) -> None:
        """Announce this node; mark interrupted the calls left live by nodes that are gone."""
        await self.ownership.start()

    async def close(self) -> None:
        """After :meth:`finish_all`: withdraw this node."""
        await asyncio.gather(*self._stopping, return_exceptions=True)
        await self.ownership.close()

    async def open(self, call_id: str, options: PipelineOptions) -> LiveCall:
        if self.draining:
            raise ProtocolError("shutting_down", "this node is draining or shutting down; connect again (to another "
                                                 "node behind the load balancer) to start or resume this call")
        if call_id in self.live or call_id in self._opening:
            raise ProtocolError("conflict", f"call {call_id} already has a producer streaming its audio")
        if not await self.s.store.probe():
            raise ProtocolError("store_unavailable", f"the call store cannot write ({self.s.store.failure}); retry later")
        self._opening.add(call_id)
        try:
            await self._admit(call_id)
            await self._claim(call_id)
            try:
                live = await self._open(call_id, options)
            except BaseException:
                self.ownership.release(call_id)
                raise
            self.live[call_id] = live
        finally:
            self._opening.discard(call_id)
        self.s.metrics.calls_started.inc()
        return live

    async def _admit(self, call_id: str) -> None:
        """Refuse a new call while the node is overloaded (server/admission.py); a call in progress resumes.
        ``call_id`` is already among the calls opening: the others are what it would join."""
        load = self.s.admission.load()
        overload = self.s.admission.overload(replace(load, calls=load.calls - 1))
        if overload is None:
            return
        row = await self.s.store.read(lambda r: r.get_call(call_id))
        if row is not None and row["status"] != "ended":
            log.info("call %s resumes here although %s", call_id, overload.code)
            return
        self.s.admission.refuse(overload)
        raise ProtocolError(overload.code, overload.message)

    async def _claim(self, call_id: str) -> None:
        try:
            holder = await self.ownership.claim(call_id)
        except OwnershipUnavailable as exc:
            raise ProtocolError("not_ready", str(exc)) from None
        if holder is not None:
            raise ProtocolError("conflict", f"call {call_id} already has a producer streaming its audio (on node "
                                            f"{holder}; if that node died, retry: its calls are free once its "
                                            f"heartbeat lapses)")

    async def _open(self, call_id: str, options: PipelineOptions) -> LiveCall:
        """Store the call as live and owned by this node (new, or resumed where its events stop)."""
        row = await self.s.store.read(lambda r: r.get_call(call_id))
        if row is not None and row["status"] == "ended":
            raise ProtocolError("call_ended", f"call {call_id} has already ended; use a new call id")
        now = time.time()
        resumed = row is not None
        started_at = row["started_at"] if row is not None else now
        if row is not None:
            options = options.model_copy(update={"agent_id": options.agent_id or row.get("agent_id")})
        call = {"call_id": call_id, "status": "live", "agent_id": options.agent_id, "language": options.language,
                "metadata": options.metadata, "roles": options.roles, "started_at": started_at, "updated_at": now,
                "owner_node": self.ownership.node_id}
        try:  # from here on, writes of a previous owner of the call are refused (SqlRepository.hold_call)
            await self.s.store.write(lambda r: r.upsert_call(call))
        except Exception as exc:
            if not self.s.store.is_storage_failure(exc):
                raise
            raise ProtocolError("store_unavailable", f"the call store cannot write ({exc}); retry later") from None
        seq, offset, history = await self._resume_point(call_id) if resumed else (0, 0.0, [])
        return LiveCall(self.s, call_id, options, seq=seq, t_offset=offset, history=history, resumed=resumed,
                        started_at=started_at)

    async def _resume_point(self, call_id: str) -> tuple[int, float, list[dict]]:
        """Where an interrupted call goes on: its last stored seq, call time, and the events its summary needs
        (read after taking the row, so nothing its previous owner stored is missed)."""
        row, seq, stored = await self.s.store.read(lambda r: (r.get_call(call_id), r.last_seq(call_id),
                                                              r.events(call_id, 0, list(SUMMARY_TYPES))))
        history = [json.loads(body) for _, _, body in stored]
        # the stored resume position (rows written before positions were stored: the last event's end)
        offset = float((row or {}).get("duration_s") or 0.0)
        offset = max([offset] + [float(e.get("end", e.get("t", 0.0)) or 0.0) for e in history])
        return seq, offset, history

    def _remove(self, live: LiveCall) -> None:
        if self.live.get(live.call_id) is live:
            del self.live[live.call_id]
            self.ownership.release(live.call_id)

    def _lost(self, call_ids: list[str], why: str) -> None:
        """This node no longer owns these calls: stop each without call.ended, its producer told to reconnect."""
        for call_id in call_ids:
            live = self.live.get(call_id)
            if live is None or live.finished:
                continue
            log.warning("call %s: node %s no longer owns it (%s); stopping it here", call_id, self.ownership.node_id,
                        why)
            live.lose(LeaseLost(f"this node no longer owns call {call_id} ({why}); reconnect with the same call id "
                                "to resume it"))
            task = asyncio.ensure_future(live.finish("lease_lost"))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def finish_all(self, how: str = "shutdown") -> None:
        await asyncio.gather(*(c.finish(how) for c in list(self.live.values())), return_exceptions=True)
