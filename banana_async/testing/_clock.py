"""A virtual clock, so that tests of polls and retries never wait."""

from __future__ import annotations

import asyncio

from banana_async.testing._common import check_non_negative

__all__ = ["FakeClock"]


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
