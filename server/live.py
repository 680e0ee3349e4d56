"""``GET /v1/live``: one websocket of call-level state for the wallboard, whatever node streams each call.

A :class:`Board` per node (made when its first viewer connects, stopped when the last one leaves) follows every
live call: it finds them in the store (``calls.status = 'live'``, every :data:`DISCOVER_EVERY_S`), follows each
one's ``call:<id>`` topic on the bus with the event feed's :class:`~calltone.server.feeds.CallStream` (stored
events first, then live ones; a gap the bus never brought is read from the store), and folds what a wallboard
shows into a :class:`CallState`: the customer's grade, index and trend, the open alerts, started and ended.  Each
viewer gets a snapshot, then frames of the states that changed, at most one frame per :data:`UPDATE_EVERY_S`, so
a call is updated at most once a second however fast its events come (a slow viewer gets the latest states, not
a backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.websockets import WebSocket, WebSocketDisconnect

from calltone.server.feeds import CallStream
from calltone.server.protocol import ProtocolError
from calltone.server.tasks import cancel_and_wait
from calltone.server.wsutil import refuse, require, services, until_disconnect

if TYPE_CHECKING:
    from calltone.server.calls import Services

log = logging.getLogger("calltone.server.live")
router = APIRouter()

UPDATE_EVERY_S = 1.0  # a viewer gets at most one frame (so one update of each call) per this many seconds
DISCOVER_EVERY_S = 1.0  # how often the store is asked which calls are live (calls started on any node)
MAX_LIVE_CALLS = 2000  # calls one board follows
SHOWN_ROLE = "customer"  # whose grade the wallboard shows (the scored speaker by default)
FOLDED = frozenset({"call.started", "emotion.update", "escalation.raised", "escalation.cleared", "call.ended"})


class CallState(BaseModel):
    """One call as the wallboard shows it."""

    call_id: str
    status: Literal["live", "ended", "interrupted"] = "live"
    agent_id: str | None = None
    queue: str | None = Field(None, description="metadata.queue")
    started_at: float = Field(description="Unix seconds")
    grade: str | None = Field(None, description="the customer's latest grade (None: not graded yet)")
    index: float | None = Field(None, description="emotion index 0-100")
    trend: float | None = Field(None, description="index points per minute")
    t: float | None = Field(None, description="call time (seconds) of the latest grade")
    alerts_open: list[str] = Field(default_factory=list, description="alert ids raised and not cleared")


class LiveFrame(BaseModel):
    type: Literal["live.snapshot", "live.update"]
    at: float = Field(description="Unix seconds when the server sent the frame")
    calls: list[CallState] = Field(description="snapshot: every live call; update: the calls that changed (a call "
                                               "whose status is no longer live leaves the board)")


class Viewer:
    """One connected wallboard: the latest state of each call that changed since its last frame."""

    def __init__(self) -> None:
        self.pending: dict[str, CallState] = {}
        self._wake = asyncio.Event()
        self.frames = 0

    def offer(self, state: CallState) -> None:
        self.pending[state.call_id] = state
        self._wake.set()

    async def run(self, ws: WebSocket, snapshot: list[CallState]) -> None:
        await ws.send_text(LiveFrame(type="live.snapshot", at=round(time.time(), 3), calls=snapshot).model_dump_json())
        last = time.monotonic()
        while True:
            await self._wake.wait()
            await asyncio.sleep(max(0.0, last + UPDATE_EVERY_S - time.monotonic()))
            self._wake.clear()
            calls, self.pending = list(self.pending.values()), {}
            last = time.monotonic()
            await ws.send_text(LiveFrame(type="live.update", at=round(time.time(), 3), calls=calls).model_dump_json())
            self.frames += 1


class Board:
    """This node's view of every live call (see the module docstring)."""

    def __init__(self, s: "Services") -> None:
        self.s = s
        self.states: dict[str, CallState] = {}
        self.viewers: set[Viewer] = set()
        self._follows: dict[str, asyncio.Task] = {}
        self._discovery: asyncio.Task | None = None

    async def join(self) -> tuple[Viewer, list[CallState]]:
        viewer = Viewer()
        if self._discovery is None:  # the first viewer: find the live calls before its snapshot
            self._discovery = asyncio.ensure_future(self._discover_loop())
            try:
                await self._discover()
            except BaseException:
                if not self.viewers:
                    await self._stop()
                raise
        self.viewers.add(viewer)
        return viewer, list(self.states.values())

    async def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers:
            await self._stop()

    async def _stop(self) -> None:
        """No viewer left: stop following the calls."""
        if self._discovery is None:
            return
        tasks, self._discovery = [self._discovery, *self._follows.values()], None
        self._follows.clear()
        self.states.clear()
        await cancel_and_wait(tasks)

    def _changed(self, state: CallState) -> None:
        for viewer in self.viewers:
            viewer.offer(state)

    async def _discover_loop(self) -> None:
        while True:
            await asyncio.sleep(DISCOVER_EVERY_S)
            try:
                await self._discover()
            except Exception:  # noqa: BLE001 -- the store may be away for a while; try again next time
                log.exception("live board: could not read the live calls")

    async def _discover(self) -> None:
        """Follow the calls that became live; let go of those that are not live any more."""
        known = set(self.states)

        def read(r):
            live = r.list_calls(status="live", limit=MAX_LIVE_CALLS)
            ids = {row["call_id"] for row in live}
            return live, [r.get_call(c) for c in known - ids]

        live, gone = await self.s.store.read(read)
        for row in live:
            if row["call_id"] not in self.states:
                meta = row.get("metadata") or {}
                state = CallState(call_id=row["call_id"], agent_id=row.get("agent_id"), started_at=row["started_at"],
                                  queue=row.get("queue") or meta.get("queue"))
                self.states[state.call_id] = state
                self._changed(state)
                self._follows[state.call_id] = asyncio.ensure_future(self._follow(state.call_id))
        for row in gone:
            if row is not None and row["call_id"] in self.states:
                self._drop(row["call_id"], "ended" if row["status"] == "ended" else "interrupted")

    def _drop(self, call_id: str, status: Literal["ended", "interrupted"]) -> None:
        state = self.states.pop(call_id, None)
        task = self._follows.pop(call_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if state is not None:
            self._changed(state.model_copy(update={"status": status}))

    async def _follow(self, call_id: str) -> None:
        """Fold the call's events into its state until call.ended (reconnecting to the bus if it falls behind)."""
        while call_id in self.states:
            with self.s.bus.subscribe(f"call:{call_id}") as sub:
                stream = CallStream(self.s.store, sub, call_id, 0)
                with contextlib.suppress(Exception):
                    await stream.run(lambda body: self._fold(call_id, body))
                if stream.ended:
                    return self._drop(call_id, "ended")
            await asyncio.sleep(DISCOVER_EVERY_S)  # too slow, or the store failed: read it all again shortly

    async def _fold(self, call_id: str, body: str) -> None:
        ev = json.loads(body)
        state = self.states.get(call_id)
        if state is None or ev.get("type") not in FOLDED:
            return
        typ, changes = ev["type"], {}
        if typ == "emotion.update" and ev.get("channel") == SHOWN_ROLE:
            changes = {"grade": ev["grade"], "index": ev["index"], "trend": ev.get("trend"), "t": ev["t"]}
        elif typ == "escalation.raised" and ev["alert_id"] not in state.alerts_open:
            changes = {"alerts_open": [*state.alerts_open, ev["alert_id"]]}
        elif typ == "escalation.cleared":
            changes = {"alerts_open": [a for a in state.alerts_open if a != ev["alert_id"]]}
        elif typ == "call.started":
            changes = {"agent_id": ev.get("agent_id") or state.agent_id,
                       "queue": (ev.get("metadata") or {}).get("queue") or state.queue}
        if changes:
            self.states[call_id] = new = state.model_copy(update=changes)
            self._changed(new)


def board(ws: WebSocket) -> Board:
    """This app's board (one per node)."""
    found = getattr(ws.app.state, "live_board", None)
    if found is None:
        found = ws.app.state.live_board = Board(services(ws))
    return found


@router.websocket("/v1/live")
async def live_feed(ws: WebSocket) -> None:
    """A snapshot of every live call, then at most one frame a second of the calls that changed."""
    await ws.accept()
    b: Board | None = None
    viewer: Viewer | None = None
    try:
        require(ws, "alerts")
        b = board(ws)
        viewer, snapshot = await b.join()
        await until_disconnect(ws, viewer.run(ws, snapshot))
    except ProtocolError as e:
        await refuse(ws, e)
    except WebSocketDisconnect as e:  # the viewer left during a send: an expected end
        log.debug("live feed: the viewer left during a send (code %s)", e.code)
    except Exception:
        log.exception("live feed failed")
        await refuse(ws, ProtocolError("internal_error", "internal error; reconnect (a new snapshot is sent)"))
    finally:
        if b is not None and viewer is not None:
            await b.leave(viewer)
