"""In-process pub/sub with a bounded queue per subscriber.

``publish`` never blocks and never waits for a subscriber.  When a subscriber's
queue is full:

* a *droppable* message (``transcript.partial``, ``emotion.update``) replaces the
  queued one with the same key (type + channel), or is dropped;
* an essential message (finals, alerts, call lifecycle) evicts the oldest queued
  droppable message, or, if there is none, is queued beyond the bound; past a hard
  cap (4 x the bound) the subscriber is cut off (:class:`SubscriberTooSlow`) and
  reconnects with ``?after=<last seq>`` to read what it missed from the store.

So a lagging desktop costs memory only up to its cap, never slows ingest or other
subscribers, and never silently loses a final transcript or an alert.

Messages with a ``seq`` (a call's events) reach a subscription at most once and in
order: one whose seq is not above the last offered is ignored (a repeated publish).  A
subscription also remembers where the seqs offered to it jumped, so a consumer can tell
a gap the bus never brought (:meth:`Subscription.missed`, filled from the store) from
droppable events it coalesced itself.  The in-process bus never has such gaps; the Redis
bus (``server.bus_url``, :mod:`calltone.server.redisbus`) can, and shares this queue logic.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calltone.settings import ServerSettings

DROPPABLE = frozenset({"transcript.partial", "emotion.update"})


@dataclass(slots=True)
class Message:
    type: str
    json: str  # serialised once, shared by all subscribers
    seq: int | None = None
    key: tuple = ()
    droppable: bool = False
    channel: str | None = None

    @classmethod
    def of(cls, type: str, json: str, seq: int | None = None, channel: str | None = None) -> "Message":
        return cls(type, json, seq, (type, channel), type in DROPPABLE, channel)


class SubscriberTooSlow(Exception):
    pass


@dataclass
class BusStats:
    published: int = 0
    delivered: int = 0
    coalesced: int = 0
    dropped: int = 0
    overflowed: int = 0
    subscribers: int = 0
    unpublished: int = 0  # Redis bus: shed from its outbox while Redis was unreachable (subscribers refill from the store)


class Subscription:
    def __init__(self, bus: "Bus", topic: str, maxsize: int) -> None:
        self.bus, self.topic, self.maxsize = bus, topic, max(1, maxsize)
        self.hard_cap = 4 * self.maxsize
        self._q: deque[Message] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.coalesced = 0
        self.dropped = 0
        self._hi = 0  # the highest seq offered
        self._runs: deque[int] = deque()  # first seq of each run of consecutive seqs offered, oldest first

    def __len__(self) -> int:
        return len(self._q)

    def offer(self, msg: Message) -> None:
        if self.closed or self.overflowed:
            return
        if msg.seq is not None:
            if msg.seq <= self._hi:
                return  # offered before: a repeated publish is never delivered twice
            if msg.seq != self._hi + 1 or not self._runs:
                self._runs.append(msg.seq)
            self._hi = msg.seq
        q = self._q
        if len(q) >= self.maxsize:
            if msg.droppable:
                for i, old in enumerate(q):
                    if old.droppable and old.key == msg.key:
                        del q[i]  # the newer state supersedes it; keep order by appending below
                        self.coalesced += 1
                        self.bus.stats.coalesced += 1
                        break
                else:
                    self.dropped += 1
                    self.bus.stats.dropped += 1
                    return
            else:
                for i, old in enumerate(q):
                    if old.droppable:
                        del q[i]
                        self.dropped += 1
                        self.bus.stats.dropped += 1
                        break
                if len(q) >= self.hard_cap:
                    self.overflowed = True
                    self.bus.stats.overflowed += 1
                    q.clear()
                    self._wake.set()
                    return
        q.append(msg)
        self._wake.set()

    async def get(self) -> Message:
        while not self._q:
            if self.overflowed:
                raise SubscriberTooSlow(f"subscriber of {self.topic} fell more than {self.hard_cap} events behind")
            if self.closed:
                raise asyncio.CancelledError()
            self._wake.clear()
            await self._wake.wait()
        if self.overflowed:
            raise SubscriberTooSlow(f"subscriber of {self.topic} fell more than {self.hard_cap} events behind")
        self.bus.stats.delivered += 1
        msg = self._q.popleft()
        runs = self._runs
        while msg.seq is not None and len(runs) > 1 and runs[1] <= msg.seq:
            runs.popleft()  # runs before the consumer's position are of no more use
        return msg

    def missed(self, after: int, seq: int) -> bool:
        """True when a seq between ``after`` and ``seq`` (a seq this subscription delivered) never reached it:
        lost on the bus, or published before it subscribed; False when they were all offered (those not
        delivered were droppable ones it coalesced or dropped)."""
        start = next((s for s in reversed(self._runs) if s <= seq), None)
        return start is None or start > after + 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._remove(self)
            self._wake.set()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Bus:
    """Topics are strings: ``call:<call_id>`` and ``alerts``.  Use from the event loop thread only.

    This in-process bus delivers within ``publish``; :class:`~calltone.server.redisbus.RedisBus` keeps the
    interface and these subscriptions and delivers from its reader task."""

    def __init__(self, default_maxsize: int = 256) -> None:
        self.default_maxsize = default_maxsize
        self._subs: dict[str, set[Subscription]] = {}
        self.stats = BusStats()

    def subscribe(self, topic: str, maxsize: int | None = None) -> Subscription:
        sub = Subscription(self, topic, maxsize or self.default_maxsize)
        self._subs.setdefault(topic, set()).add(sub)
        self.stats.subscribers += 1
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs and sub in subs:
            subs.discard(sub)
            self.stats.subscribers -= 1
            if not subs:
                del self._subs[sub.topic]

    async def start(self) -> None:
        """Connect (nothing to do in-process)."""

    async def following(self, topic: str) -> None:
        """Return once a subscription to ``topic`` made before is sure to get everything published from now on,
        on any node (in-process: at once)."""

    async def close(self) -> None:
        """Disconnect (nothing to do in-process)."""

    def publish(self, topic: str, msg: Message) -> int:
        """Offer ``msg`` to every subscriber of ``topic``; return how many there are."""
        self.stats.published += 1
        return self._deliver(topic, msg)

    def _deliver(self, topic: str, msg: Message) -> int:
        subs = self._subs.get(topic)
        if not subs:
            return 0
        for sub in list(subs):
            sub.offer(msg)
        return len(subs)

    def subscriber_count(self, topic: str | None = None) -> int:
        if topic is None:
            return sum(len(s) for s in self._subs.values())
        return len(self._subs.get(topic, ()))


def create_bus(server: "ServerSettings") -> Bus:
    """The in-process bus, or the Redis Streams bus when ``server.bus_url`` is set."""
    if not server.bus_url:
        return Bus(server.subscriber_queue)
    from calltone.server.redisbus import RedisBus  # redis-py: the `scaleout` extra, needed only with bus_url

    return RedisBus(server.bus_url, server.subscriber_queue, ended_ttl_s=server.bus_ttl_s)
