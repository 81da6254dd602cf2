"""A virtual clock, so that tests of polls and retries never wait."""

from __future__ import annotations

import asyncio
import time

from banana_async.testing._common import check_non_negative

__all__ = ["FakeClock", "FastClock"]


class FakeClock:
    """A virtual clock for :class:`~banana_async.BananaClient` and this server.

    ``sleep`` advances the time at once instead of waiting, and records how
    long it was asked to sleep, so a test can check poll spacing and retry
    delays without a wall clock. Share it with the server
    (``FakeBananaServer(clock=clock.time)``) so tasks progress on the same
    time line. Exact for one sleeper at a time; with many concurrent
    sleepers each advances the shared time by its own delay.

    Attributes:
        now: The current virtual time in seconds.
        sleeps: Every delay passed to :meth:`sleep`, in order.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        """The virtual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the virtual time by ``seconds`` and let other tasks run.

        Raises:
            ValueError: ``seconds`` is negative (or NaN), which
                :func:`asyncio.sleep` would take as zero and hide a bug.
        """
        check_non_negative(seconds, "seconds")
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FastClock:
    """Real time, sped up: ``speed`` seconds of this clock pass per real second.

    Where :class:`FakeClock` serves one sleeper at a time, this one serves
    any number: every sleep is a real :func:`asyncio.sleep`, shortened by
    ``speed``, so a batch's thousands of concurrent polls, retry delays and
    429 pauses keep their order and spacing, only faster. Share it with the
    server (``FakeBananaServer(clock=clock.time)``) and the client
    (``BananaClient(clock=clock)``). Time is read from
    ``time.monotonic()``, so it is one time line across threads (a
    :class:`~banana_async.SyncBananaClient` runs its own event loop).

    What the clock does not govern stays real: the client's HTTP
    ``timeout``, and the length of a :meth:`Fault.stall`.

    Attributes:
        speed: Seconds of this clock per real second.
        sleeps: How many times :meth:`sleep` was called.
    """

    def __init__(self, speed: float = 50.0, start: float = 1000.0) -> None:
        if not speed > 0:
            msg = f"speed must be > 0, got {speed!r}"
            raise ValueError(msg)
        self.speed = speed
        self.sleeps = 0
        self._start = start
        self._origin = time.monotonic()

    def time(self) -> float:
        """The sped-up time."""
        return self._start + (time.monotonic() - self._origin) * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock (``seconds / speed`` real seconds).

        Raises:
            ValueError: ``seconds`` is negative (or NaN).
        """
        check_non_negative(seconds, "seconds")
        self.sleeps += 1
        await asyncio.sleep(seconds / self.speed)
