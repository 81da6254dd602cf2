"""Shared fixtures: a fake provider on loopback and a virtual clock."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import banana_async as ba
from banana_async.journal import Journal, JournalEntry
from banana_async.testing import FakeBananaServer, FakeClock

from ._servers import postgres_cluster

# pytester runs pytest in a temporary directory: the tests of the pytest plugin use it.
pytest_plugins = ["pytester"]

# Hypothesis profiles (docs/contributing.md, "Fuzzing"). "suite", the default,
# keeps the regular run cheap and the same on every run: derandomized, no
# example database, no deadline (eight jobs may share two cores).
# HYPOTHESIS_PROFILE=long (nox -s fuzz) searches far more, at random, and
# keeps what it found for the next run.
settings.register_profile(
    "suite",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    stateful_step_count=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[FakeBananaServer]:
    """A fake provider whose tasks progress on the virtual clock."""
    async with FakeBananaServer(api_key=API_KEY, duration=None, clock=clock.time) as srv:
        yield srv


@pytest.fixture(params=["nano", "navo"])
def dialect(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def client(
    server: FakeBananaServer, clock: FakeClock, dialect: str
) -> AsyncIterator[ba.BananaClient]:
    async with ba.BananaClient(
        API_KEY,
        dialect=dialect,
        base_url=server.url,
        clock=clock,
        poll_interval=2.0,
        timeout=5.0,
    ) as c:
        yield c


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where a journal test keeps its journal (the file does not exist yet)."""
    return tmp_path / "batch.sqlite"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    """A new journal at ``path``, closed after the test."""
    with Journal.open(path) as opened:
        yield opened


def reopened(path: Path) -> list[JournalEntry]:
    """The entries of the journal at ``path``, read by a new open of the file."""
    with Journal.open(path) as opened:
        return list(opened.entries())


@pytest.fixture
async def live() -> AsyncIterator[FakeBananaServer]:
    """A fake provider on the real clock (batches run many tasks at once)."""
    async with FakeBananaServer(api_key=API_KEY, duration=0.05) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A Postgres cluster of this test session: its URL (skipped without Postgres, but in CI)."""
    with postgres_cluster() as url:
        yield url


_batches = itertools.count()


@pytest.fixture
def batch_name(request: pytest.FixtureRequest) -> str:
    """A batch name of this test alone (the tests share one cluster)."""
    return f"{request.node.name}-{next(_batches)}"


def live_client(server: FakeBananaServer, **options: Any) -> ba.BananaClient:
    """A client of ``server`` that polls every 20 ms unless told otherwise."""
    settings: dict[str, Any] = {"base_url": server.url, "poll_interval": 0.02, **options}
    return ba.BananaClient(API_KEY, **settings)


def batch_tasks() -> list[asyncio.Task[Any]]:
    """The asyncio tasks of batches still alive (none once a batch is cleaned up)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("banana_async-batch")]


class SharedClock(FakeClock):
    """A :class:`FakeClock` that stays exact with many sleepers at once.

    ``FakeClock`` lets every sleeper advance the shared time by its own delay,
    which is right for one sleeper at a time. Here the awaitables given to
    :meth:`run` take turns: a sleep waits for its wake-up time, and the time
    jumps to the earliest one only when every one of them is asleep or done.
    One busy with a request over loopback counts as awake, so the virtual
    time line does not depend on how fast the machine answers. Every sleeper
    must be one of those awaitables.
    """

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._awake = 0

    async def run(self, *awaitables: Awaitable[Any]) -> list[Any]:
        """Run the awaitables together on this clock; their results or exceptions, in order."""

        async def one(awaitable: Awaitable[Any]) -> Any:
            try:
                return await awaitable
            finally:
                self._awake -= 1
                self._advance()

        self._awake += len(awaitables)
        return await asyncio.gather(*(one(a) for a in awaitables), return_exceptions=True)

    async def sleep(self, seconds: float) -> None:
        """Wait until the virtual time reaches ``seconds`` from now."""
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time ({seconds})")
        self.sleeps.append(seconds)
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._order), wake))
        self._awake -= 1
        self._advance()
        try:
            await wake
        except asyncio.CancelledError:
            if wake.cancelled():  # cancelled while asleep: awake again, to unwind
                self._awake += 1
            raise

    def _advance(self) -> None:
        """If nobody is awake, jump to the next wake-up and wake everyone due then."""
        while self._awake == 0 and self._timers:
            when, _, wake = heapq.heappop(self._timers)
            if wake.done():  # its sleeper was cancelled
                continue
            self.now = max(self.now, when)
            wake.set_result(None)
            self._awake += 1
            while self._timers and self._timers[0][0] <= self.now:
                _, _, due = heapq.heappop(self._timers)
                if not due.done():
                    due.set_result(None)
                    self._awake += 1
