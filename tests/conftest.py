"""Shared fixtures: a fake provider on loopback and a virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import banana_async as ba
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
