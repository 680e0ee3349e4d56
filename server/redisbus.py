"""The bus on Redis Streams, for many nodes sharing one Redis (``server.bus_url``).

Same interface and the same subscriptions as :class:`~calltone.server.bus.Bus`
(bounded queues, coalescing, :class:`~calltone.server.bus.SubscriberTooSlow`); only
how a message travels differs:

* topic ``call:<id>`` is the stream ``calltone:call:<id>``, whose entry ids are the
  event seqs (``<seq>-0``): Redis itself refuses a second publish of a seq (a retry, a
  zombie writer), and a read from ``<after>-0`` is a replay.  Each publish caps the
  stream (``MAXLEN ~``) and refreshes an idle expiry; ``call.ended`` trims it and sets
  ``EXPIRE bus_ttl_s``.  Topic ``alerts`` is ``calltone:alerts``: auto ids, capped length.
* :meth:`RedisBus.publish` never blocks: it queues.  One writer task sends the queue in
  order, pipelined, and retries while Redis is unreachable (a retried batch's repeats
  are refused by Redis, which is fine).  Past :data:`MAX_BACKLOG` queued messages the
  oldest are shed (``stats.unpublished``); subscribers fill such gaps from the store.
* One reader task per node: ``XREAD BLOCK`` over the streams that this node's
  subscribers follow, plus a wake stream of its own, so that a new topic re-issues the
  read at once.  A topic is read from the stream's last entry when the writer handles
  the subscription, so every later publish of this node reaches it; an earlier remote
  publish that the subscriber's store replay missed shows up as
  :meth:`~calltone.server.bus.Subscription.missed` and is filled from the store.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING, Awaitable, Callable, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from calltone.server.bus import Bus, Message, Subscription
from calltone.server.tasks import cancel_and_wait

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

log = logging.getLogger("calltone.server.redisbus")
T = TypeVar("T")

PREFIX = "calltone:"
CALL_TOPIC = "call:"
MAX_BACKLOG = 20_000  # messages queued for Redis while it is unreachable, then the oldest are shed
BATCH = 512  # messages per pipeline
STREAM_MAXLEN = 20_000  # entries kept per call stream while the call runs (approximate)
ENDED_KEEP = 100  # entries kept after call.ended, for readers still behind (approximate)
IDLE_TTL_S = 86_400  # a call stream that stops without call.ended (a crash) expires a day after its last event
BLOCK_MS = 1000
FOLLOW_TIMEOUT_S = 5.0  # how long a new subscriber waits for its stream position before going on
RETRY_MIN_S, RETRY_MAX_S = 0.05, 1.0
CLOSE_FLUSH_S = 2.0
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisBus(Bus):
    def __init__(self, url: str, default_maxsize: int = 256, *, ended_ttl_s: float = 300.0,
                 alerts_maxlen: int = 10_000) -> None:
        super().__init__(default_maxsize)
        self.url = url
        self.ended_ttl_s = ended_ttl_s
        self.alerts_maxlen = alerts_maxlen
        no_retry = Retry(NoBackoff(), 0)  # the loops below retry, with backoff, for as long as it takes
        self._writer = Redis.from_url(url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=2.0,
                                      retry=no_retry)
        self._reader = Redis.from_url(url, decode_responses=True, socket_timeout=BLOCK_MS / 1000 + 5.0,
                                      socket_connect_timeout=2.0, retry=no_retry)
        self._outbox: deque[tuple[str, Message]] = deque()
        self._to_watch: set[str] = set()  # stream keys newly subscribed to, whose head the writer reads next
        self._heads: dict[str, str] = {}  # stream key -> entry id to read after (set by the writer, taken by the reader)
        self._positioned: dict[str, asyncio.Event] = {}  # stream key -> set once its head is known (see following)
        self._cursors: dict[str, str] = {}  # stream key -> last entry id read (the reader's)
        self._wake_key = f"{PREFIX}bus:wake:{uuid.uuid4().hex}"
        self._wake_cursor = "0-0"
        self._kick = asyncio.Event()  # the writer has work
        self._drained = asyncio.Event()  # nothing queued or in flight
        self._drained.set()
        self._tasks: list[asyncio.Task] = []
        self._unreachable = {"writer": False, "reader": False}

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write_loop(), name="calltone-bus-writer"),
                       asyncio.create_task(self._read_loop(), name="calltone-bus-reader")]
        try:
            await asyncio.wait_for(self._writer.ping(), 5.0)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("Redis bus %s not reachable yet (%s); publishing and reading retry until it is", self.url, exc)

    async def close(self) -> None:
        """Send what is queued (for at most :data:`CLOSE_FLUSH_S`), then stop and disconnect."""
        try:
            await asyncio.wait_for(self._drained.wait(), CLOSE_FLUSH_S)
        except asyncio.TimeoutError:
            log.warning("Redis bus: %d message(s) not sent at shutdown (the store has them)", len(self._outbox))
        await cancel_and_wait(self._tasks)
        try:
            await asyncio.wait_for(self._writer.delete(self._wake_key), 1.0)
        except (RedisError, OSError, asyncio.TimeoutError):
            pass  # it expires
        await self._writer.aclose()
        await self._reader.aclose()

    # -- the interface -----------------------------------------------------------------
    def subscribe(self, topic: str, maxsize: int | None = None) -> Subscription:
        key = PREFIX + topic
        if key not in self._cursors and topic not in self._subs:
            self._to_watch.add(key)
            self._positioned.setdefault(key, asyncio.Event())
            self._wake_writer()
        return super().subscribe(topic, maxsize)

    async def following(self, topic: str, timeout: float = FOLLOW_TIMEOUT_S) -> None:
        """Wait until the writer has read the stream's head for a new subscription (so an entry another node adds
        after this returns is read), at most ``timeout`` (Redis unreachable: go on; the store fills call gaps)."""
        positioned = self._positioned.get(PREFIX + topic)
        if positioned is None:
            return
        try:
            await asyncio.wait_for(positioned.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("Redis bus: %s not followed after %.0f s (Redis unreachable?); going on", topic, timeout)

    def publish(self, topic: str, msg: Message) -> int:
        """Queue ``msg`` for Redis, whose readers deliver it (this node's too); return this node's subscribers."""
        if topic.startswith(CALL_TOPIC) and msg.seq is None:
            raise ValueError(f"a message on {topic} needs a seq (its stream entry id)")
        self.stats.published += 1
        if len(self._outbox) >= MAX_BACKLOG:
            self._outbox.popleft()
            self.stats.unpublished += 1
        self._outbox.append((topic, msg))
        self._wake_writer()
        return self.subscriber_count(topic)

    def _wake_writer(self) -> None:
        self._drained.clear()
        self._kick.set()

    # -- the writer --------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            if not self._outbox and not self._to_watch:
                self._drained.set()
                self._kick.clear()
                await self._kick.wait()
                continue
            watch = sorted(self._to_watch)
            self._to_watch.clear()
            batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
            try:
                await self._until_sent("writer", lambda: self._send(watch, batch))
            except RedisError:  # not a lost connection: retrying would not help
                log.exception("Redis bus: %d message(s) not published (subscribers read them from the store)", len(batch))
                self.stats.unpublished += len(batch)

    async def _until_sent(self, who: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt()`` until Redis answers; back off while it is unreachable."""
        delay = RETRY_MIN_S
        while True:
            try:
                out = await attempt()
            except UNREACHABLE as exc:
                if not self._unreachable[who]:
                    self._unreachable[who] = True
                    log.warning("Redis bus %s: %s unreachable (%s); retrying", self.url, who, exc)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if self._unreachable[who]:
                self._unreachable[who] = False
                log.info("Redis bus %s: %s reconnected", self.url, who)
            return out

    async def _send(self, watch: list[str], batch: list[tuple[str, Message]]) -> None:
        """Read the heads of newly watched streams, then send the batch (and a wake for the reader)."""
        if watch:
            async with self._writer.pipeline(transaction=False) as pipe:
                for key in watch:
                    pipe.xrevrange(key, count=1)
                heads = await pipe.execute()
            for key, last in zip(watch, heads):
                self._heads.setdefault(key, last[0][0] if last else "0-0")
                positioned = self._positioned.pop(key, None)
                if positioned is not None:
                    positioned.set()  # whatever is added to the stream from now on, the reader reads
        async with self._writer.pipeline(transaction=False) as pipe:
            if watch:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, IDLE_TTL_S)
            for topic, msg in batch:
                self._queue_xadd(pipe, PREFIX + topic, msg)
            results = await pipe.execute(raise_on_error=False)
        for res in results:
            if isinstance(res, UNREACHABLE):
                raise res
            if isinstance(res, ResponseError) and "equal or smaller" not in str(res):  # else a refused repeat
                log.error("Redis bus: a publish was refused: %s", res)

    def _queue_xadd(self, pipe: "Pipeline", key: str, msg: Message) -> None:
        fields = {"t": msg.type, "j": msg.json}
        if msg.channel is not None:
            fields["c"] = msg.channel
        if msg.seq is None:
            pipe.xadd(key, fields, maxlen=self.alerts_maxlen, approximate=True)
            return
        fields["s"] = str(msg.seq)
        pipe.xadd(key, fields, id=f"{msg.seq}-0", maxlen=STREAM_MAXLEN, approximate=True)
        if msg.type == "call.ended":
            pipe.xtrim(key, maxlen=ENDED_KEEP, approximate=True)
            pipe.expire(key, max(1, round(self.ended_ttl_s)))
        else:
            pipe.expire(key, IDLE_TTL_S)

    # -- the reader --------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            self._sync_cursors()
            streams = {self._wake_key: self._wake_cursor, **self._cursors}
            try:
                reply = await self._until_sent("reader", lambda: self._reader.xread(streams, count=BATCH, block=BLOCK_MS))
            except RedisError:  # e.g. a key of another type where a stream should be
                log.exception("Redis bus: reading %d stream(s) failed", len(streams))
                await asyncio.sleep(RETRY_MAX_S)
                continue
            for key, entries in reply or ():
                if key == self._wake_key:
                    self._wake_cursor = entries[-1][0]
                elif key in self._cursors and entries:
                    self._cursors[key] = entries[-1][0]
                    self._dispatch(key[len(PREFIX):], entries)

    def _sync_cursors(self) -> None:
        """Read exactly the streams that this node's subscribers follow."""
        wanted = {PREFIX + topic for topic in self._subs}
        self._cursors = {k: c for k, c in self._cursors.items() if k in wanted}
        heads, self._heads = self._heads, {}
        for key, head in heads.items():
            if key in wanted and key not in self._cursors:
                self._cursors[key] = head

    def _dispatch(self, topic: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        for entry_id, f in entries:
            try:
                seq = int(f["s"]) if "s" in f else None
                msg = Message.of(f["t"], f["j"], seq, f.get("c"))
            except (KeyError, ValueError):
                log.warning("Redis bus: entry %s of %s is not one of ours; skipped", entry_id, topic)
                continue
            self._deliver(topic, msg)
