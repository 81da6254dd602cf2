"""Poll timing: how long to wait before the next status query.

The providers ask for 2-5 s between polls of one task and rate-limit faster
polling, so no delay produced here is ever below the minimum interval; jitter
only ever lengthens it, which also spreads thousands of pollers started
together.

:class:`PollPolicy` learns how long tasks take, per model and resolution, from
tasks this client saw finish, and aims the first poll of a new task near the
:data:`FIRST_POLL_QUANTILE` of those durations: early enough that few tasks
finish long before it, late enough to skip the polls that would only have
said "processing". After that it polls at the minimum interval.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from typing import Protocol

from banana_async.errors import InvalidRequestError

DEFAULT_POLL_INTERVAL = 2.0
"""Seconds between status queries of one task: the providers' recommendation."""

POLL_JITTER = 0.1
"""Up to this fraction of the interval is added at random to each delay."""

FIRST_POLL_QUANTILE = 0.3
"""Where the first poll of a task is aimed in the learned duration distribution.

Chosen by simulation (tasks of 5-15 s, 2 s interval): 0.3 gives about 2.6
queries per task with a mean of 1.2 s between a task finishing and the client
seeing it, against 5.5 queries for fixed 2 s polling.
"""

DURATION_HISTORY = 256
"""Durations remembered per model and resolution (the most recent ones)."""

MIN_SAMPLES = 5
"""Durations needed before a learned estimate is trusted."""

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
        """Monotonic seconds: what the event loop's own clock reads by default."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep with :func:`asyncio.sleep`."""
        await asyncio.sleep(seconds)


WAKE_GRID = POLL_JITTER / 4
"""Wake-ups are rounded up to multiples of this fraction of the interval.

Timer coalescing: thousands of pollers whose jittered wake-ups land on a
shared grid wake in one event-loop iteration instead of one iteration each,
which costs far less CPU; the jitter survives in grid-sized steps. The
random part of a delay is drawn from the jitter less one grid step, so a
rounded delay still never exceeds :data:`POLL_JITTER`.
"""


def poll_delay(interval: float, *, rng: random.Random | None = None) -> float:
    """The delay before the next poll: ``interval`` plus up to :data:`POLL_JITTER` of it.

    Before rounding to the wake grid (:func:`wake_delay`) the added part is
    at most ``POLL_JITTER - WAKE_GRID`` of the interval.
    """
    return interval * (1.0 + (rng or random).uniform(0.0, POLL_JITTER - WAKE_GRID))


def wake_delay(now: float, delay: float, interval: float) -> float:
    """``delay`` lengthened so that ``now + delay`` falls on the interval's wake grid."""
    step = interval * WAKE_GRID
    return math.ceil((now + delay) / step) * step - now


MIN_POLL_INTERVAL = 0.001
"""The shortest ``poll_interval`` accepted (tests poll fast; providers want 2-5 s)."""

MAX_POLL_INTERVAL = 86_400.0
"""The longest ``poll_interval`` accepted: image URLs expire in about a day."""


def check_interval(
    value: float,
    name: str = "poll_interval",
    *,
    low: float = MIN_POLL_INTERVAL,
    high: float = MAX_POLL_INTERVAL,
) -> float:
    """Validate a positive rate or interval given by a caller, within ``[low, high]``.

    A bound keeps the arithmetic of wake-ups and rate buckets finite: an
    interval of ``1e-320`` seconds would overflow it.
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise InvalidRequestError(f"{name} must be a positive number, not {value!r}")
    if math.isinf(value):
        raise InvalidRequestError(f"{name} must be finite")
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low:g} and {high:g}, not {value!r}")
    return float(value)


MIN_TIMEOUT = 0.001
"""The shortest deadline accepted: a shorter one could only ever expire."""


def check_timeout(value: float | None, name: str = "timeout") -> float | None:
    """Validate a deadline: None or infinity mean none, otherwise seconds >= 0.001."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise InvalidRequestError(
            f"{name} must be a positive number of seconds or None, not {value!r}"
        )
    if value < MIN_TIMEOUT:
        raise InvalidRequestError(f"{name} must be at least {MIN_TIMEOUT:g} s, not {value!r}")
    return None if math.isinf(value) else float(value)


DurationKey = tuple[str, str]
"""What durations are learned per: (model, resolution or "")."""


class PollPolicy:
    """Learns task durations and decides when to poll.

    Durations are learned from the polls themselves: a task first seen done at
    ``t`` after its creation, whose previous poll (at ``p``) still said
    "processing", finished somewhere in ``(p, t]``, and the middle of that
    window is remembered. A task done at its first poll has no previous poll;
    its window is taken to be one interval wide, which keeps the estimate from
    drifting upwards as the first poll moves later.
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._samples: dict[object, deque[float]] = {}
        self._estimates: dict[object, float | None] = {}

    def poll_delay(self, interval: float) -> float:
        """Delay between polls: ``interval`` plus up to :data:`POLL_JITTER` of it."""
        return poll_delay(interval, rng=self._rng)

    def expected_duration(self, key: DurationKey) -> float | None:
        """The learned :data:`FIRST_POLL_QUANTILE` duration for ``key``, or None.

        Falls back from (model, resolution) to the model, then to every task.
        """
        for level in (key, key[0], None):
            estimate = self._estimate(level)
            if estimate is not None:
                return estimate
        return None

    def first_delay(self, key: DurationKey | None, interval: float, elapsed: float) -> float:
        """Delay until the first poll of a task created ``elapsed`` seconds ago."""
        expected = None if key is None else self.expected_duration(key)
        if expected is None or expected <= interval:
            return max(0.0, self.poll_delay(interval) - elapsed)
        jitter = self._rng.uniform(0.0, POLL_JITTER - WAKE_GRID)
        return max(0.0, expected * (1.0 + jitter) - elapsed)

    def observe(
        self, key: DurationKey, *, last_pending: float | None, first_done: float, interval: float
    ) -> None:
        """Learn from a task first seen done ``first_done`` s after its creation.

        Args:
            key: The task's model and resolution.
            last_pending: When (after creation) a poll last saw it unfinished,
                or None if none did.
            first_done: When (after creation) a poll first saw it finished.
            interval: The poll interval in use.
        """
        low = last_pending if last_pending is not None else max(0.0, first_done - interval)
        sample = (low + first_done) / 2.0
        for level in (key, key[0], None):
            samples = self._samples.get(level)
            if samples is None:
                samples = self._samples[level] = deque(maxlen=DURATION_HISTORY)
            samples.append(sample)
            self._estimates.pop(level, None)

    def _estimate(self, level: object) -> float | None:
        if level in self._estimates:
            return self._estimates[level]
        samples = self._samples.get(level)
        estimate = None
        if samples is not None and len(samples) >= MIN_SAMPLES:
            ordered = sorted(samples)
            estimate = ordered[int(FIRST_POLL_QUANTILE * (len(ordered) - 1))]
        self._estimates[level] = estimate
        return estimate
