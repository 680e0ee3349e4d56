"""Outgoing websocket feeds: one call's events, and the supervisors' alert feed.

A client that goes away while a frame is being sent to it (Starlette's ``WebSocketDisconnect``) ends its feed as
an expected end, logged at debug level; any other exception is a failure, logged with its traceback."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from calltone.server.bus import SubscriberTooSlow
from calltone.server.protocol import AlertMessage, ProtocolError, valid_call_id
from calltone.server.wsutil import close_ok, refuse, require, services, until_disconnect

if TYPE_CHECKING:
    from calltone.server.bus import Subscription
    from calltone.server.store import AsyncStore

log = logging.getLogger("calltone.server.feeds")

Send = Callable[[str], Awaitable[None]]


class CallStream:
    """One call's events in seq order for one receiver, each once: the stored ones after ``after``, then the
    live ones from ``sub`` (subscribed before this starts).  A gap the bus never brought (lost on a Redis
    bus, or published before the subscription) is filled from the store, never skipped."""

    def __init__(self, store: "AsyncStore", sub: "Subscription", call_id: str, after: int) -> None:
        self.store, self.sub, self.call_id = store, sub, call_id
        self.last = max(0, after)  # the highest seq sent
        self.ended = False

    async def _replay(self, send: Send) -> None:
        after = self.last
        for seq, typ, body in await self.store.read(lambda r: r.events(self.call_id, after)):
            await send(body)
            self.last = seq
            self.ended = self.ended or typ == "call.ended"

    async def run(self, send: Send) -> None:
        """Send until call.ended has been sent."""
        await self._replay(send)
        while not self.ended:
            msg = await self.sub.get()
            if msg.seq is not None and msg.seq > self.last + 1 and self.sub.missed(self.last, msg.seq):
                await self._replay(send)
                if self.ended:
                    return
            if msg.seq is not None and msg.seq <= self.last:
                continue  # already sent from the store
            await send(msg.json)
            if msg.seq is not None:
                self.last = msg.seq
            self.ended = msg.type == "call.ended"


async def call_events(ws: WebSocket, call_id: str, after: int = 0) -> None:
    """Stored events with ``seq > after``, then live ones, without gaps or duplicates; closes 1000 after call.ended."""
    s = services(ws)
    await ws.accept()
    stream: CallStream | None = None
    try:
        principal = require(ws, "read_calls")
        if not valid_call_id(call_id):
            raise ProtocolError("bad_call_id", "invalid call id")
        live = s.registry.live.get(call_id)
        row = await s.store.read(lambda r: r.get_call(call_id))
        agent_id = live.agent_id if live is not None else row["agent_id"] if row is not None else None
        access = principal.call_access(live is not None or row is not None, agent_id)
        if access == "not_found":
            raise ProtocolError("not_found", f"no call {call_id}")
        if access == "forbidden":  # the same answer for another agent's call and an unknown id
            raise ProtocolError("forbidden", f"call {call_id} is not one of your calls")
        # Subscribe BEFORE reading the store: anything published from now on is queued,
        # anything published before is already stored (events are stored, then published).
        with s.bus.subscribe(f"call:{call_id}") as sub:
            stream = CallStream(s.store, sub, call_id, after)
            await until_disconnect(ws, stream.run(ws.send_text))
            if stream.ended:
                await close_ok(ws, "call ended")
    except ProtocolError as e:
        await refuse(ws, e)
    except SubscriberTooSlow:
        last = stream.last if stream is not None else max(0, after)
        await refuse(ws, ProtocolError("subscriber_too_slow", f"too far behind; reconnect with ?after={last}"))
    except WebSocketDisconnect as e:
        log.debug("event feed of %s: the client left during a send (code %s)", call_id, e.code)
    except Exception:
        log.exception("event feed of %s failed", call_id)
        last = stream.last if stream is not None else max(0, after)
        await refuse(ws, ProtocolError("internal_error", f"internal error; reconnect with ?after={last}"))


async def alerts_feed(ws: WebSocket) -> None:
    """Open alerts first (``replay: true``), then every escalation.raised / cleared / alert.acked as it happens."""
    s = services(ws)
    await ws.accept()
    try:
        require(ws, "alerts")
        with s.bus.subscribe("alerts") as sub:
            await s.bus.following("alerts")  # alerts raised on any node from now on reach sub; older ones are stored
            open_alerts = await s.store.read(lambda r: r.list_alerts(status="open", limit=1000))
            sent: set[str] = set()
            for a in open_alerts:
                msg = AlertMessage(type="escalation.raised", replay=True,
                                   **{k: v for k, v in a.items() if k in AlertMessage.model_fields and k not in ("type", "replay")})
                await ws.send_text(msg.model_dump_json())
                sent.add(a["alert_id"])

            async def pump() -> None:
                while True:
                    msg = await sub.get()
                    if msg.type == "escalation.raised" and sent:
                        # the snapshot may already hold an alert raised while we read it
                        aid = AlertMessage.model_validate_json(msg.json).alert_id
                        if aid in sent:
                            sent.discard(aid)
                            continue
                    await ws.send_text(msg.json)

            await until_disconnect(ws, pump())
    except ProtocolError as e:
        await refuse(ws, e)
    except SubscriberTooSlow:
        await refuse(ws, ProtocolError("subscriber_too_slow", "too far behind; reconnect (open alerts are re-sent)"))
    except WebSocketDisconnect as e:
        log.debug("alert feed: the client left during a send (code %s)", e.code)
    except Exception:
        log.exception("alert feed failed")
        await refuse(ws, ProtocolError("internal_error", "internal error"))
