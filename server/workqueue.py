"""Work that exactly one node of a cluster does, through Redis (``server.bus_url``).

**Webhook deliveries** (:class:`RedisWebhookQueue`): the node that raises an alert adds one
entry per URL to the stream ``calltone:webhooks`` (the whole delivery, its
``X-Calltone-Delivery`` id included).  Every node reads the stream as one consumer of the
group ``calltone-webhooks`` (``XREADGROUP``), so each entry goes to one node, which delivers
it with the shared :class:`~calltone.server.webhooks.Deliverer` (retries, backoff,
signature, every attempt logged in the store) and then acknowledges and deletes it
(``XACK`` + ``XDEL``), delivered or given up.  While a delivery runs, its node re-claims it
every third of ``server.webhook_claim_idle_s`` (only if still its own), so its idle time
stays short; a node that dies stops doing so, and once the entry has been idle for
``webhook_claim_idle_s`` another node takes it over (``XAUTOCLAIM``) and goes on from the
next attempt number the store has not seen, with the same delivery id.  A delivery is
therefore made at least once; a receiver may see one twice (the dead node's last attempt
and the next one) and de-duplicates on the id.  When Redis cannot take an entry, the node
that raised the alert delivers it itself.

**The retention purge** (:func:`redis_purge_turns`): the time of Redis's clock is cut into
slots of ``privacy.purge_interval_s``; in each slot every node tries ``SET NX`` on
``calltone:purge:<slot>``, and only the one that set it purges.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from calltone.server.tasks import cancel_and_wait
from calltone.server.webhooks import CLOSE_WAIT_S, Delivery, WebhookQueue

if TYPE_CHECKING:
    from calltone.server.webhooks import Deliverer

log = logging.getLogger("calltone.server.workqueue")

STREAM = "calltone:webhooks"
GROUP = "calltone-webhooks"
PURGE_KEY = "calltone:purge:"
BLOCK_MS = 1000
MAX_IN_FLIGHT = 32  # deliveries one node runs at once (their POSTs share the Deliverer's limit)
RETRY_S = 1.0  # while Redis is unreachable
STALE_CONSUMER_S = 3600.0  # a consumer with nothing pending that has not read for this long is removed from the group
DELIVERY_FIELDS = tuple(f.name for f in fields(Delivery))
UNREACHABLE = (RedisError, OSError)

# Re-claim (to reset their idle time) those of the given entries that are still pending on this consumer.
REFRESH_OWN = """
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return 0
"""


def node_name() -> str:
    """This process's consumer name: host, pid and a few random characters (a restart is a new consumer)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"


def connect(url: str, block_s: float = 0.0) -> Redis:
    return Redis.from_url(url, decode_responses=True, socket_timeout=block_s + 5.0, socket_connect_timeout=2.0)


class RedisWebhookQueue(WebhookQueue):
    """Deliveries shared by all nodes through a Redis consumer group (see the module docstring)."""

    def __init__(self, url: str, urls: list[str], deliverer: "Deliverer", *, claim_idle_s: float) -> None:
        super().__init__(urls, deliverer)
        self.url = url
        self.claim_idle_s = claim_idle_s
        self.consumer = node_name()
        self._redis = connect(url, BLOCK_MS / 1000)
        self._refresh = self._redis.register_script(REFRESH_OWN)
        self._running: dict[str, asyncio.Task] = {}  # entry id -> its delivery on this node
        self._loops: list[asyncio.Task] = []
        self._unreachable = False

    async def start(self) -> None:
        self._loops = [asyncio.create_task(self._read_loop(), name="calltone-webhooks-reader"),
                       asyncio.create_task(self._claim_loop(), name="calltone-webhooks-claimer")]

    async def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Stop taking deliveries; those not finished within ``timeout`` stay pending for another node."""
        await cancel_and_wait(self._loops)
        await super().close(timeout)
        await self._redis.aclose()

    async def _submit(self, d: Delivery) -> None:
        try:
            await self._redis.xadd(STREAM, asdict(d))
        except UNREACHABLE as exc:
            log.warning("webhooks: Redis %s did not take %s (%s); delivering it from this node", self.url,
                        d.delivery_id, exc)
            await self.deliverer.deliver(d)

    # -- taking deliveries ---------------------------------------------------------------
    async def _read_loop(self) -> None:
        joined = False
        while True:
            try:
                if not joined:
                    await self._join()
                    joined = True
                joined = await self._read_once()
            except UNREACHABLE as exc:
                self._outage(exc)
                await asyncio.sleep(RETRY_S)

    async def _read_once(self) -> bool:
        """Take new deliveries (as many as this node has room for); False if the group must be joined again."""
        while len(self._running) >= MAX_IN_FLIGHT:
            await asyncio.wait(list(self._running.values()), return_when=asyncio.FIRST_COMPLETED)
        try:
            reply = await self._redis.xreadgroup(GROUP, self.consumer, {STREAM: ">"},
                                                 count=MAX_IN_FLIGHT - len(self._running), block=BLOCK_MS)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):  # else the stream was deleted (e.g. Redis lost its data)
                raise
            return False
        self._reachable()
        for _, entries in reply or ():
            for entry_id, entry in entries:
                self._take(entry_id, entry, claimed=False)
        return True

    async def _join(self) -> None:
        """Create the group (unless a node did) and this node's consumer in it."""
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self._redis.xgroup_createconsumer(STREAM, GROUP, self.consumer)
        self._reachable()

    async def _claim_loop(self) -> None:
        """Keep this node's deliveries fresh; take over those idle past ``claim_idle_s``; tidy the consumers."""
        while True:
            try:
                if self._running:
                    await self._refresh(keys=[STREAM], args=[GROUP, self.consumer, *self._running])
                await self._claim_idle()
                await self._tidy_consumers()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("webhooks: claiming deliveries failed")
            except UNREACHABLE as exc:
                self._outage(exc)
            await asyncio.sleep(self.claim_idle_s / 3)

    async def _claim_idle(self) -> None:
        cursor = "0-0"
        while len(self._running) < MAX_IN_FLIGHT:
            reply = await self._redis.xautoclaim(STREAM, GROUP, self.consumer, round(self.claim_idle_s * 1000),
                                                 start_id=cursor, count=MAX_IN_FLIGHT - len(self._running))
            cursor, entries = reply[0], reply[1]
            for entry_id, entry in entries:
                if entry_id not in self._running:
                    log.info("webhooks: taking over delivery %s (its node stopped working on it)", entry_id)
                self._take(entry_id, entry, claimed=True)
            if cursor == "0-0":
                return

    async def _tidy_consumers(self) -> None:
        """Remove consumers with nothing pending that have not read for long (departed nodes; Redis 7.0 also counts a
        quiet live node as idle, so each node re-creates its own consumer, which keeps it listed in XINFO CONSUMERS)."""
        for c in await self._redis.xinfo_consumers(STREAM, GROUP):
            if c["name"] != self.consumer and c["pending"] == 0 and c["idle"] > STALE_CONSUMER_S * 1000:
                await self._redis.xgroup_delconsumer(STREAM, GROUP, c["name"])
        await self._redis.xgroup_createconsumer(STREAM, GROUP, self.consumer)

    def _take(self, entry_id: str, entry: dict[str, str] | None, *, claimed: bool) -> None:
        if entry_id in self._running:
            return
        try:
            d = Delivery(**{k: (entry or {})[k] for k in DELIVERY_FIELDS})
        except KeyError:
            log.warning("webhooks: entry %s of %s is not a delivery; dropped", entry_id, STREAM)
            self._spawn(self._ack(entry_id))
            return
        self._running[entry_id] = self._spawn(self._run(entry_id, d, claimed))

    async def _run(self, entry_id: str, d: Delivery, claimed: bool) -> None:
        try:
            first = await self.deliverer.logged_attempts(d) + 1 if claimed else 1
            await self.deliverer.deliver(d, first)
            await self._ack(entry_id)
        except Exception:  # e.g. the store failed: left pending, so another node (or this one) retries it later
            log.exception("webhooks: delivery %s (%s) interrupted", d.delivery_id, entry_id)
        finally:
            self._running.pop(entry_id, None)

    async def _ack(self, entry_id: str) -> None:
        while True:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.xack(STREAM, GROUP, entry_id).xdel(STREAM, entry_id).execute()
                return
            except UNREACHABLE as exc:
                self._outage(exc)
                await asyncio.sleep(RETRY_S)

    def _outage(self, exc: BaseException) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("webhooks: Redis %s unreachable (%s); retrying", self.url, exc)

    def _reachable(self) -> None:
        if self._unreachable:
            self._unreachable = False
            log.info("webhooks: Redis %s reachable again", self.url)


async def redis_purge_turns(url: str, interval_s: float) -> AsyncIterator[int]:
    """The purge slots this node won (slot ``n``: Redis time in ``[n, n + 1) * interval_s``), each as it starts."""
    redis = connect(url)
    node = node_name()
    last: int | None = None
    down = False
    try:
        while True:
            try:
                secs, micros = await redis.time()
                down = False
                now = secs + micros / 1e6
                slot = int(now // interval_s)
                if slot != last:
                    last = slot
                    if await redis.set(f"{PURGE_KEY}{slot}", node, nx=True, px=max(1000, math.ceil(2000 * interval_s))):
                        yield slot
                    continue  # read the clock again after the purge
                wait = (slot + 1) * interval_s - now
            except UNREACHABLE as exc:
                if not down:
                    down = True
                    log.warning("retention purge: Redis %s unreachable (%s); retrying", url, exc)
                wait = min(interval_s, RETRY_S)
            await asyncio.sleep(wait)
    finally:
        await redis.aclose()
