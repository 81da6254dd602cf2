"""Poll timing: how long to wait before the next status query.

The providers ask for 2-5 s between polls of one task and rate-limit faster
polling, so no delay produced here is ever below the minimum interval; jitter
only ever lengthens it, which also spreads thousands of pollers started
together.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Protocol

DEFAULT_POLL_INTERVAL = 2.0
"""Seconds between status queries of one task: the providers' recommendation."""

POLL_JITTER = 0.25
"""Up to this fraction of the interval is added at random to each delay."""

DEFAULT_WAIT_TIMEOUT = 900.0
"""Seconds a ``wait`` or ``generate`` may take unless told otherwise."""


class Clock(Protocol):
    """Where the client reads the time and sleeps; inject one to test without waiting."""

    def time(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep this many seconds of this clock's time."""
        ...


class SystemClock:
    """The real clock: the event loop's monotonic time and :func:`asyncio.sleep`."""

    def time(self) -> float:
        """The running loop's time."""
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        """Sleep with :func:`asyncio.sleep`."""
        await asyncio.sleep(seconds)


def poll_delay(interval: float, *, rng: random.Random | None = None) -> float:
    """The delay before the next poll: ``interval`` plus up to 25 % jitter."""
    return interval * (1.0 + (rng or random).uniform(0.0, POLL_JITTER))


def check_interval(value: float, name: str = "poll_interval") -> float:
    """Validate a poll interval given by a caller."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    if math.isinf(value):
        raise ValueError(f"{name} must be finite")
    return float(value)


def check_timeout(value: float | None, name: str = "timeout") -> float | None:
    """Validate a deadline: None or infinity mean none, otherwise positive seconds."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, not {value!r}")
    return None if math.isinf(value) else float(value)
