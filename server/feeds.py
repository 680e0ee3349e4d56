"""Outgoing websocket feeds: one call's events, and the supervisors' alert feed."""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket

from calltone.server.bus import SubscriberTooSlow
from calltone.server.protocol import AlertMessage, ProtocolError, valid_call_id
from calltone.server.wsutil import close_ok, refuse, require, services, until_disconnect

log = logging.getLogger("calltone.server.feeds")


async def call_events(ws: WebSocket, call_id: str, after: int = 0) -> None:
    """Stored events with ``seq > after``, then live ones, without gaps or duplicates; closes 1000 after call.ended."""
    s = services(ws)
    await ws.accept()
    last = max(0, after)
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

            async def replay() -> bool:
                """Send the stored events after ``last``; True when call.ended was one of them."""
                nonlocal last
                after, ended = last, False
                for seq, typ, body in await s.store.read(lambda r: r.events(call_id, after)):
                    await ws.send_text(body)
                    last = seq
                    ended = ended or typ == "call.ended"
                return ended

            if await replay():
                await close_ok(ws, "call ended")
                return

            async def pump() -> None:
                nonlocal last
                while True:
                    msg = await sub.get()
                    if msg.seq is not None and msg.seq > last + 1 and sub.missed(last, msg.seq) and await replay():
                        await close_ok(ws, "call ended")  # a gap the bus never brought is filled from the store
                        return
                    if msg.seq is not None and msg.seq <= last:
                        continue  # already sent from the store
                    await ws.send_text(msg.json)
                    if msg.seq is not None:
                        last = msg.seq
                    if msg.type == "call.ended":
                        await close_ok(ws, "call ended")
                        return

            await until_disconnect(ws, pump())
    except ProtocolError as e:
        await refuse(ws, e)
    except SubscriberTooSlow:
        await refuse(ws, ProtocolError("subscriber_too_slow", f"too far behind; reconnect with ?after={last}"))
    except Exception:
        log.exception("event feed of %s failed", call_id)
        await refuse(ws, ProtocolError("internal_error", f"internal error; reconnect with ?after={last}"))


async def alerts_feed(ws: WebSocket) -> None:
    """Open alerts first (``replay: true``), then every escalation.raised / cleared / alert.acked as it happens."""
    s = services(ws)
    await ws.accept()
    try:
        require(ws, "alerts")
        with s.bus.subscribe("alerts") as sub:
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
    except Exception:
        log.exception("alert feed failed")
        await refuse(ws, ProtocolError("internal_error", "internal error"))
