"""Stopping background tasks for certain.

``task.cancel()`` can be lost: on Python 3.11 a cancellation that arrives just as an
``asyncio.timeout`` inside the awaited call expires (redis-py wraps every command in
one) comes out as that ``TimeoutError``, which a loop that retries Redis errors then
swallows and carries on.  :func:`cancel_and_wait` cancels again until the tasks end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

RECANCEL_S = 0.25  # how long a cancelled task gets before it is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel ``tasks`` and return once every one has ended (their exceptions are not raised)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
