"""Outgoing webhooks for alerts: JSON POST, HMAC-SHA256 signed, retried with backoff.

Headers: ``Content-Type: application/json``, ``X-Calltone-Event`` (the alert
message type), ``X-Calltone-Delivery`` (unique per alert + URL + type),
``X-Calltone-Timestamp`` (Unix seconds) and, when ``server.webhook_secret`` is set,
``X-Calltone-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``.
A 2xx answer is success; anything else (or no answer in 5 s) is retried after
1, 2, 4, 8 s ... (``attempts`` in all).  Every attempt is logged in the store
(``deliveries`` table; ``GET /v1/alerts/{id}`` shows them).
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

from calltone.server.metrics import Metrics
from calltone.server.store import AsyncStore

log = logging.getLogger("calltone.server.webhooks")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """For receivers: check ``X-Calltone-Signature``."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender:
    def __init__(self, urls: list[str], secret: str, store: AsyncStore, metrics: Metrics, attempts: int = 5,
                 base_delay_s: float = 1.0, timeout_s: float = 5.0) -> None:
        self.urls = [u for u in urls if u]
        self.secret = secret
        self.store = store
        self.metrics = metrics
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.timeout_s = timeout_s
        self._tasks: set[asyncio.Task] = set()
        self._sem = asyncio.Semaphore(8)

    def send(self, alert_id: str, event_type: str, body: str) -> None:
        """Fire and forget (from the event loop): one delivery task per URL."""
        for url in self.urls:
            task = asyncio.ensure_future(self._deliver(url, alert_id, event_type, body.encode()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _post(self, url: str, headers: dict, body: bytes) -> int:
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    async def _deliver(self, url: str, alert_id: str, event_type: str, body: bytes) -> bool:
        delivery = f"{alert_id}:{event_type}:{uuid.uuid4().hex[:8]}"
        for attempt in range(1, self.attempts + 1):
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "calltone-webhooks/1",
                       "X-Calltone-Event": event_type, "X-Calltone-Delivery": delivery, "X-Calltone-Timestamp": ts}
            if self.secret:
                headers["X-Calltone-Signature"] = sign(self.secret, ts, body)
            status, error = None, None
            try:
                async with self._sem:
                    status = await asyncio.to_thread(self._post, url, headers, body)
            except Exception as exc:  # noqa: BLE001 - network errors of every kind are retried
                error = f"{type(exc).__name__}: {exc}"[:500]
            ok = status is not None and 200 <= status < 300
            self.metrics.webhooks.labels("ok" if ok else "failed").inc()
            await self.store.write(lambda r, a=attempt, s=status, e=error, o=ok:
                                   r.log_delivery(alert_id, url, event_type, a, o, s, e))
            if ok:
                return True
            if attempt < self.attempts:
                await asyncio.sleep(self.base_delay_s * 2 ** (attempt - 1))
        log.warning("webhook %s gave up on %s after %d attempts", url, delivery, self.attempts)
        return False

    async def close(self, timeout: float = 2.0) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            for t in pending:
                t.cancel()
