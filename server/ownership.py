"""Which node serves each live call, so that many nodes can share one store (``server.bus_url``).

A *node* is one ``calltone serve`` process; it takes a fresh id (a uuid) when it starts.  The node that
opens or resumes a call *owns* it: the call row's ``owner_node`` names it, and the node's writes to the
call are fenced by that (:meth:`~calltone.server.sqlbase.SqlRepository.hold_call`: refused once another
node has taken the call over or the call was marked interrupted; the ``(call_id, seq)`` key refuses any
seq already stored).  Two implementations of :class:`Ownership`:

* :class:`LocalOwnership` (``bus_url`` unset): one node, as always.  The registry's own ``live`` dict is
  the producer check, and at start every call left ``live`` is marked interrupted (the process that
  served it is gone).
* :class:`RedisOwnership` (``bus_url`` set, the bus's Redis): a heartbeat key ``calltone:node:<id>``
  that expires after ``server.node_ttl_s``, refreshed every ``server.node_heartbeat_s`` together with
  the lease ``calltone:lease:<call_id>`` (value: the node id, same expiry) of every call the node
  serves.  Opening a call takes its lease: ``SET`` when it is free, or when its holder's heartbeat is
  gone (a dead node's lease is taken over at once); otherwise the producer is refused (``conflict``).
  At start and every ``node_ttl_s`` a node marks interrupted the live calls whose owner has no
  heartbeat (never another live node's calls).  A refresh that finds a lease no longer this node's
  (taken over while this node was paused or cut off from Redis) reports the call lost: the registry
  stops it without ``call.ended`` and its producer is told to reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Callable, Protocol

from calltone.server.tasks import cancel_and_wait

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from calltone.server.store import AsyncStore
    from calltone.settings import ServerSettings

log = logging.getLogger("calltone.server.ownership")

NODE_KEY = "calltone:node:"  # the bus's key prefix (server/redisbus.py)
LEASE_KEY = "calltone:lease:"
CLOSE_TIMEOUT_S = 2.0

# KEYS[1] the lease; ARGV: node id, ttl ms, heartbeat key prefix.  Nil when taken, else the live holder.
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. holder) == 1 then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# KEYS[1] the heartbeat, KEYS[2..] the leases held; ARGV: node id, ttl ms, heartbeat value.
# Returns {heartbeat was still there (0/1), the leases that are no longer this node's}.
REFRESH = """
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
local lost = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  else
    lost[#lost + 1] = KEYS[i]
  end
end
return {had, lost}
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

LostCalls = Callable[[list[str], str], None]  # (call ids, why): this node no longer owns these calls


class LeaseLost(Exception):
    """This node no longer owns the call: another node took it over, or it was marked interrupted."""


class OwnershipUnavailable(Exception):
    """A call's lease cannot be taken now (Redis unreachable)."""


class Ownership(Protocol):
    node_id: str

    async def start(self) -> None:
        """Announce this node and mark interrupted the live calls of nodes that are gone."""

    async def claim(self, call_id: str) -> str | None:
        """Take the call's lease: None when this node now holds it, else the id of the live node holding it."""

    def release(self, call_id: str) -> None:
        """This node is done with the call (does not wait)."""

    async def close(self) -> None: ...


def new_node_id() -> str:
    return uuid.uuid4().hex


class LocalOwnership:
    """One node (no ``bus_url``): nothing is shared, so there is nothing to lease."""

    def __init__(self, store: "AsyncStore") -> None:
        self.node_id = new_node_id()
        self.store = store

    async def start(self) -> None:
        interrupted = await self.store.write(lambda r: r.interrupt_live())
        if interrupted:
            log.warning("%d call(s) were live when the server last stopped; marked interrupted (a producer may "
                        "resume them)", interrupted)

    async def claim(self, call_id: str) -> str | None:
        return None  # the registry's live dict already refused a second producer

    def release(self, call_id: str) -> None:
        pass

    async def close(self) -> None:
        pass


class RedisOwnership:
    """Heartbeat and call leases in Redis (see the module docstring)."""

    def __init__(self, url: str, store: "AsyncStore", on_lost: LostCalls, *, heartbeat_s: float, ttl_s: float,
                 info: str = "") -> None:
        from redis.asyncio import Redis  # the `scaleout` extra, needed only with bus_url
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        if ttl_s < 2 * heartbeat_s:
            raise ValueError(f"server.node_ttl_s ({ttl_s}) must be at least twice server.node_heartbeat_s "
                             f"({heartbeat_s})")
        self.node_id = new_node_id()
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.ttl_ms = round(ttl_s * 1000)
        self.info = info or f"{socket.gethostname()} pid {os.getpid()}"
        # as the bus connects (server/redisbus.py), answers bounded by the heartbeat so a slow Redis cannot stall it
        self._redis: Redis = Redis.from_url(url, decode_responses=True, socket_timeout=min(5.0, heartbeat_s),
                                            socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0))
        self._claim = self._redis.register_script(CLAIM)
        self._refresh = self._redis.register_script(REFRESH)
        self._release = self._redis.register_script(RELEASE)
        self._on_lost = on_lost
        self._held: set[str] = set()
        self._releasing: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._unreachable = False
        self._errors: tuple[type[Exception], ...] = (RedisError, OSError)  # Redis unreachable, or refusing

    @property
    def heartbeat_key(self) -> str:
        return NODE_KEY + self.node_id

    async def start(self) -> None:
        log.info("node %s: heartbeat every %.1f s, dead after %.1f s without one", self.node_id, self.heartbeat_s,
                 self.ttl_ms / 1000)
        await self._beat()
        await self._sweep()
        self._task = asyncio.create_task(self._run(), name="calltone-ownership")

    async def claim(self, call_id: str) -> str | None:
        try:
            holder = await self._claim(keys=[LEASE_KEY + call_id], args=[self.node_id, self.ttl_ms, NODE_KEY])
        except self._errors as exc:
            raise OwnershipUnavailable(f"the call leases in Redis cannot be reached ({exc}); retry shortly") from exc
        if holder is None:
            self._held.add(call_id)
        return holder

    def release(self, call_id: str) -> None:
        self._held.discard(call_id)
        task = asyncio.ensure_future(self._drop_lease(call_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def stop_beating(self) -> None:
        """Stop the heartbeat task for good (see :mod:`calltone.server.tasks`: a cancellation can be lost)."""
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def close(self) -> None:
        await self.stop_beating()
        for call_id in list(self._held):
            self.release(call_id)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*self._releasing, return_exceptions=True)
                await self._redis.delete(self.heartbeat_key)  # the other nodes know at once that this one is gone
        except (TimeoutError, *self._errors) as exc:
            log.warning("node %s: could not withdraw its heartbeat (%s); it expires", self.node_id, exc)
        await self._redis.aclose()

    # -- the background task ------------------------------------------------------------
    async def _run(self) -> None:
        beats_per_sweep = max(1, round(self.ttl_ms / 1000 / self.heartbeat_s))
        beats = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self._beat()
            beats += 1
            if beats % beats_per_sweep == 0:
                await self._sweep()

    async def _beat(self) -> None:
        """Refresh the heartbeat and the leases held; report the calls whose lease is no longer this node's."""
        held = sorted(self._held)
        try:
            had, lost = await self._refresh(keys=[self.heartbeat_key, *(LEASE_KEY + c for c in held)],
                                            args=[self.node_id, self.ttl_ms, self.info])
        except self._errors as exc:
            if not self._unreachable:
                self._unreachable = True
                log.warning("node %s: cannot refresh its heartbeat (%s); retrying", self.node_id, exc)
            return
        if self._unreachable:
            self._unreachable = False
            log.info("node %s: heartbeat refreshed again", self.node_id)
        if not had and self._task is not None:
            log.warning("node %s: its heartbeat had lapsed (paused, or cut off from Redis, for over %.1f s): other "
                        "nodes may have taken its calls over", self.node_id, self.ttl_ms / 1000)
        gone = [c for c in (key[len(LEASE_KEY):] for key in lost) if c in self._held]
        if gone:
            self._held.difference_update(gone)
            self._on_lost(gone, "its lease was taken over or expired" if had else "this node's heartbeat lapsed")

    async def _sweep(self) -> None:
        """Mark interrupted the live calls whose owning node has no heartbeat."""
        try:
            owners = [o for o in await self.store.read(lambda r: r.live_owners()) if o != self.node_id]
            if not owners:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.exists(NODE_KEY + owner if owner else NODE_KEY)
                alive = await pipe.execute()
            dead = [o for o, up in zip(owners, alive) if not up or o is None]
            if dead:
                n = await self.store.write(lambda r: r.interrupt_owned(dead))
                log.warning("%d live call(s) of %d node(s) without a heartbeat marked interrupted (a producer may "
                            "resume them on any node): %s", n, len(dead), ", ".join(o or "unknown" for o in dead))
        except Exception as exc:  # noqa: BLE001 -- Redis or the store away: the next sweep tries again
            log.warning("node %s: sweeping dead nodes' calls failed: %s", self.node_id, exc)

    async def _drop_lease(self, call_id: str) -> None:
        try:
            await self._release(keys=[LEASE_KEY + call_id], args=[self.node_id])
        except self._errors as exc:
            log.warning("call %s: could not release its lease (%s); it expires", call_id, exc)


def create_ownership(server: "ServerSettings", store: "AsyncStore", on_lost: LostCalls) -> Ownership:
    """Local ownership, or leases in the bus's Redis when ``server.bus_url`` is set."""
    if not server.bus_url:
        return LocalOwnership(store)
    return RedisOwnership(server.bus_url, store, on_lost, heartbeat_s=server.node_heartbeat_s, ttl_s=server.node_ttl_s,
                          info=f"{socket.gethostname()}:{server.port} pid {os.getpid()}")
