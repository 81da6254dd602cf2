"""Shared fixtures: a fake provider on loopback and a virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import banana_async as ba
from banana_async.journal import Journal, JournalEntry
from banana_async.testing import FakeBananaServer, FakeClock

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


def live_client(server: FakeBananaServer, **options: Any) -> ba.BananaClient:
    """A client of ``server`` that polls every 20 ms unless told otherwise."""
    settings: dict[str, Any] = {"base_url": server.url, "poll_interval": 0.02, **options}
    return ba.BananaClient(API_KEY, **settings)


def batch_tasks() -> list[asyncio.Task[Any]]:
    """The asyncio tasks of batches still alive (none once a batch is cleaned up)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("banana_async-batch")]
