"""The calls being streamed right now: opening (new or resumed) and finishing them."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from calltone.server.calls import SUMMARY_TYPES, LiveCall
from calltone.server.protocol import ProtocolError

if TYPE_CHECKING:
    from calltone.pipeline import PipelineOptions
    from calltone.server.calls import Services


class CallRegistry:
    """The calls being streamed right now (at most one producer each)."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.live: dict[str, LiveCall] = {}
        self._opening: set[str] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self.live)

    async def open(self, call_id: str, options: PipelineOptions) -> LiveCall:
        if self.draining:
            raise ProtocolError("shutting_down", "the server is shutting down; reconnect shortly to resume this call")
        if call_id in self.live or call_id in self._opening:
            raise ProtocolError("conflict", f"call {call_id} already has a producer streaming its audio")
        if not await self.s.store.probe():
            raise ProtocolError("store_unavailable", f"the call store cannot write ({self.s.store.failure}); retry later")
        self._opening.add(call_id)
        try:
            row = await self.s.store.read(lambda r: r.get_call(call_id))
            if row is not None and row["status"] == "ended":
                raise ProtocolError("call_ended", f"call {call_id} has already ended; use a new call id")
            now = time.time()
            seq, offset, history, started_at = 0, 0.0, [], now
            if row is not None:  # resume an interrupted call
                stored = await self.s.store.read(lambda r: (r.last_seq(call_id), r.events(call_id, 0, list(SUMMARY_TYPES))))
                seq = stored[0]
                history = [json.loads(body) for _, _, body in stored[1]]
                # the stored resume position (rows written before positions were stored: the last event's end)
                offset = float(row.get("duration_s") or 0.0)
                offset = max([offset] + [float(e.get("end", e.get("t", 0.0)) or 0.0) for e in history])
                started_at = row["started_at"]
                options = options.model_copy(update={"agent_id": options.agent_id or row.get("agent_id")})
            call = {"call_id": call_id, "status": "live", "agent_id": options.agent_id, "language": options.language,
                    "metadata": options.metadata, "roles": options.roles, "started_at": started_at, "updated_at": now}
            try:
                await self.s.store.write(lambda r: r.upsert_call(call))
            except Exception as exc:
                if not self.s.store.is_storage_failure(exc):
                    raise
                raise ProtocolError("store_unavailable", f"the call store cannot write ({exc}); retry later") from None
            live = LiveCall(self.s, call_id, options, seq=seq, t_offset=offset, history=history, resumed=row is not None,
                            started_at=started_at)
            self.live[call_id] = live
            self.s.metrics.calls_started.inc()
            return live
        finally:
            self._opening.discard(call_id)

    def _remove(self, live: LiveCall) -> None:
        if self.live.get(live.call_id) is live:
            del self.live[live.call_id]

    async def finish_all(self, how: str = "shutdown") -> None:
        await asyncio.gather(*(c.finish(how) for c in list(self.live.values())), return_exceptions=True)
