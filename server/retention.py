"""The retention purge: calls older than ``privacy.retention_days`` are deleted every ``privacy.purge_interval_s``.

One node purges on its own clock; with ``server.bus_url`` set, the nodes take turns through Redis so
that each interval is purged by exactly one of them (:func:`~calltone.server.workqueue.redis_purge_turns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from typing import TYPE_CHECKING, AsyncIterator

if TYPE_CHECKING:
    from calltone.server.calls import Services
    from calltone.settings import Settings

log = logging.getLogger("calltone.server.retention")


async def purge_loop(s: "Services") -> None:
    """Purge on each of this node's turns, until cancelled."""
    if s.settings.privacy.retention_days <= 0:
        return
    async with contextlib.aclosing(purge_turns(s.settings)) as turns:
        async for turn in turns:
            log.info("retention purge (turn %d)", turn)
            try:
                await purge_expired(s)
            except Exception:
                log.exception("retention purge failed")


def purge_turns(settings: "Settings") -> AsyncIterator[int]:
    interval = settings.privacy.purge_interval_s
    if not settings.server.bus_url:
        return local_turns(interval)
    from calltone.server.workqueue import redis_purge_turns  # redis-py: the `scaleout` extra, needed only with bus_url

    return redis_purge_turns(settings.server.bus_url, interval)


async def local_turns(interval_s: float) -> AsyncIterator[int]:
    """Now, then ``interval_s`` after each purge ends."""
    turn = 0
    while True:
        yield turn
        turn += 1
        await asyncio.sleep(interval_s)


async def purge_expired(s: "Services", now: float | None = None) -> list[str]:
    """Delete calls (events, alerts, deliveries, kept audio) older than privacy.retention_days."""
    days = s.settings.privacy.retention_days
    if days <= 0:
        return []
    before = (now or time.time()) - days * 86400
    ids = await s.store.write(lambda r: r.purge(before))
    if s.audio_dir is not None:
        for call_id in ids:
            d = s.audio_dir / call_id
            if d.is_dir():
                await asyncio.to_thread(shutil.rmtree, d, True)
    if ids:
        log.info("retention: purged %d call(s) older than %d days", len(ids), days)
    return ids
