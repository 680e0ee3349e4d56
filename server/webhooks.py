"""Outgoing webhooks for alerts: JSON POST, HMAC-SHA256 signed, retried with backoff.

Headers: ``Content-Type: application/json``, ``X-Calltone-Event`` (the alert
message type), ``X-Calltone-Delivery`` (unique per alert + URL + type, the same on every
attempt and on a re-delivery by another node: receivers de-duplicate on it),
``X-Calltone-Timestamp`` (Unix seconds) and, when ``server.webhook_secret`` is set,
``X-Calltone-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``.
A 2xx answer is success; anything else (or no answer in ``server.webhook_timeout_s``)
is retried after 1, 2, 4, 8 s ... (``attempts`` in all).  Every attempt is logged in
the store (``deliveries`` table; ``GET /v1/alerts/{id}`` shows them).

Where a delivery runs is a :class:`WebhookQueue`: :class:`WebhookSender` delivers in
this process (one node); with ``server.bus_url`` set,
:class:`~calltone.server.workqueue.RedisWebhookQueue` hands each delivery to exactly
one node of the cluster, and another node takes over a dead node's deliveries.  Both
deliver through the one :class:`Deliverer`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from calltone.server.tasks import cancel_and_wait

if TYPE_CHECKING:
    from calltone.server.metrics import Metrics
    from calltone.server.store import AsyncStore
    from calltone.settings import ServerSettings

log = logging.getLogger("calltone.server.webhooks")

CONCURRENT_POSTS = 8  # per node
CLOSE_WAIT_S = 2.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """For receivers: check ``X-Calltone-Signature``."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert message for one URL; ``delivery_id`` is the ``X-Calltone-Delivery`` header of all its attempts."""

    url: str
    alert_id: str
    event_type: str
    body: str
    delivery_id: str

    @classmethod
    def new(cls, url: str, alert_id: str, event_type: str, body: str) -> "Delivery":
        return cls(url, alert_id, event_type, body, f"{alert_id}:{event_type}:{uuid.uuid4().hex[:8]}")


class Deliverer:
    """POSTs one delivery until it succeeds or its attempts are used up, logging every attempt in the store."""

    def __init__(self, secret: str, store: "AsyncStore", metrics: "Metrics", attempts: int = 5,
                 base_delay_s: float = 1.0, timeout_s: float = 5.0) -> None:
        self.secret = secret
        self.store = store
        self.metrics = metrics
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.timeout_s = timeout_s
        self._sem = asyncio.Semaphore(CONCURRENT_POSTS)

    async def logged_attempts(self, d: Delivery) -> int:
        """How many attempts of ``d`` the store holds (made by any node)."""
        rows = await self.store.read(lambda r: r.deliveries(d.alert_id))
        return sum(1 for row in rows if row["url"] == d.url and row["event_type"] == d.event_type)

    async def deliver(self, d: Delivery, first_attempt: int = 1) -> bool:
        """Attempts ``first_attempt`` .. ``attempts`` (backing off between them); True once one got a 2xx."""
        body = d.body.encode()
        for attempt in range(first_attempt, self.attempts + 1):
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "calltone-webhooks/1",
                       "X-Calltone-Event": d.event_type, "X-Calltone-Delivery": d.delivery_id,
                       "X-Calltone-Timestamp": ts}
            if self.secret:
                headers["X-Calltone-Signature"] = sign(self.secret, ts, body)
            status, error = None, None
            try:
                async with self._sem:
                    status = await asyncio.to_thread(self._post, d.url, headers, body)
            except Exception as exc:  # noqa: BLE001 - network errors of every kind are retried
                error = f"{type(exc).__name__}: {exc}"[:500]
            ok = status is not None and 200 <= status < 300
            self.metrics.webhooks.labels("ok" if ok else "failed").inc()
            await self.store.write(lambda r, a=attempt, s=status, e=error, o=ok:
                                   r.log_delivery(d.alert_id, d.url, d.event_type, a, o, s, e))
            if ok:
                return True
            if attempt < self.attempts:
                await asyncio.sleep(self.base_delay_s * 2 ** (attempt - 1))
        log.warning("webhook %s gave up on %s after %d attempts", d.url, d.delivery_id, self.attempts)
        return False

    def _post(self, url: str, headers: dict, body: bytes) -> int:
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code


class WebhookQueue(ABC):
    """Where alert deliveries run.  ``send`` is called on the event loop and never blocks."""

    def __init__(self, urls: list[str], deliverer: Deliverer) -> None:
        self.urls = [u for u in urls if u]
        self.deliverer = deliverer
        self._tasks: set[asyncio.Task] = set()

    def send(self, alert_id: str, event_type: str, body: str) -> None:
        """Fire and forget: one delivery per configured URL."""
        for url in self.urls:
            self._spawn(self._submit(Delivery.new(url, alert_id, event_type, body)))

    @abstractmethod
    async def _submit(self, d: Delivery) -> None:
        """Deliver ``d`` here, or hand it to whichever node will."""

    async def start(self) -> None:
        """Begin taking deliveries (a no-op where nothing is shared)."""

    async def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Let deliveries under way finish for at most ``timeout``, then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            await cancel_and_wait(pending)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class WebhookSender(WebhookQueue):
    """One node: every delivery runs in this process, its retries in memory."""

    async def _submit(self, d: Delivery) -> None:
        await self.deliverer.deliver(d)


def create_webhooks(server: "ServerSettings", store: "AsyncStore", metrics: "Metrics",
                    base_delay_s: float = 1.0) -> WebhookQueue:
    """In this process, or through the Redis consumer group of all nodes when ``server.bus_url`` is set."""
    deliverer = Deliverer(server.webhook_secret, store, metrics, base_delay_s=base_delay_s,
                          timeout_s=server.webhook_timeout_s)
    if not server.bus_url:
        return WebhookSender(server.webhooks, deliverer)
    from calltone.server.workqueue import RedisWebhookQueue  # redis-py: the `scaleout` extra, needed only with bus_url

    return RedisWebhookQueue(server.bus_url, server.webhooks, deliverer, claim_idle_s=server.webhook_claim_idle_s)
