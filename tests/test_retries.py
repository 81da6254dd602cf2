"""Retries over real HTTP: what is sent again, and how often the provider saw it.

A create is billed by the provider and has no idempotency key, so each test
on creates checks the number of POSTs the fake provider received and the
number of tasks it created.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest

import banana_async as ba
from banana_async._retry import MAX_RETRY_AFTER, MAX_RETRY_DELAY
from banana_async.client import RATE_LIMIT_PAUSE
from banana_async.ratelimit import AdaptiveRateLimiter
from banana_async.ratelimit._adaptive import MIN_PAUSE
from banana_async.testing import FakeBananaServer, FakeClock, Fault

from .conftest import API_KEY


@pytest.fixture(params=[True, False], ids=["learning", "not-learning"])
async def retrying(
    server: FakeBananaServer, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[ba.BananaClient]:
    limiter = AdaptiveRateLimiter(learn=request.param, clock=clock)
    async with ba.BananaClient(
        API_KEY, base_url=server.url, clock=clock, max_retries=3, timeout=0.5, rate_limiter=limiter
    ) as client:
        yield client


def _pause(client: ba.BananaClient) -> float:
    """The least pause after a 429 without Retry-After: a learning limiter pauses briefly."""
    limiter = client._limiter
    assert isinstance(limiter, AdaptiveRateLimiter)
    return MIN_PAUSE if limiter.rate is not None else RATE_LIMIT_PAUSE


# -- creates: sent again only where they cannot have been processed ----------------


@pytest.mark.parametrize("process", [True, False])
async def test_create_500_is_not_resent(
    retrying: ba.BananaClient, server: FakeBananaServer, clock: FakeClock, process: bool
) -> None:
    server.inject(Fault.status(500, process=process), on="create")
    with pytest.raises(ba.ServerError) as info:
        await retrying.create("a cat")
    assert info.value.status_code == 500
    assert server.count("create") == 1
    assert len(server.tasks) == (1 if process else 0)
    assert clock.sleeps == []


async def test_create_reset_after_processing_is_not_resent(
    retrying: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.inject(Fault.reset(process=True), on="create")
    with pytest.raises(ba.APIConnectionError) as info:
        await retrying.create("a cat")
    assert info.value.request_sent is True
    assert server.count("create") == 1
    assert len(server.tasks) == 1  # billed: the caller must be told, not retried


async def test_create_read_timeout_is_not_resent(
    retrying: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.inject(Fault.stall(5.0, process=True), on="create")
    with pytest.raises(ba.APITimeoutError) as info:
        await retrying.create("a cat")
    assert info.value.request_sent is True
    assert server.count("create") == 1


async def test_create_429_is_retried_until_accepted(
    retrying: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    server.inject(Fault.status(429, headers={"Retry-After": "3"}), on="create", times=2)
    task = await retrying.create("a cat")
    assert server.count("create") == 3
    assert list(server.tasks) == [task.id]
    assert clock.sleeps == [3.0, 3.0]  # Retry-After honoured exactly, no jitter


async def test_create_429_gives_up_after_max_retries(
    retrying: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    server.inject(Fault.status(429), on="create", times=10)
    with pytest.raises(ba.RateLimitError):
        await retrying.create("a cat")
    assert server.count("create") == 4  # the first try and 3 retries
    assert server.tasks == {}
    # A 429 without Retry-After pauses the whole client (briefly once it learns a rate).
    times = [r.at for r in server.requests]
    assert all(b - a >= _pause(retrying) - 1e-9 for a, b in itertools.pairwise(times))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here once the socket is closed


async def test_create_retried_when_connection_never_established(clock: FakeClock) -> None:
    async with ba.BananaClient(
        API_KEY, base_url=f"http://127.0.0.1:{_closed_port()}", clock=clock, max_retries=2
    ) as client:
        with pytest.raises(ba.APIConnectionError) as info:
            await client.create("a cat")
    assert info.value.request_sent is False
    assert not isinstance(info.value, ba.APITimeoutError)
    assert len(clock.sleeps) == 2  # refused connections are safe to retry


async def test_create_that_waited_too_long_for_a_shared_pool_was_not_sent(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    # A borrowed session's only connection is held by someone else's stalled
    # request: the create times out waiting for the pool and was never sent.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        server.inject(Fault.stall(0.6), on="query")
        outside = asyncio.create_task(session.get(server.url + "/v1/result/x"))
        await asyncio.sleep(0.05)
        async with ba.BananaClient(
            API_KEY,
            base_url=server.url,
            session=session,
            clock=clock,
            connect_timeout=0.2,
            timeout=2.0,
            max_retries=0,
        ) as client:
            with pytest.raises(ba.APITimeoutError) as info:
                await client.create("a cat")
            assert info.value.request_sent is False
        (await outside).release()
    assert server.count("create") == 0


async def test_a_create_waits_for_a_free_connection_without_a_timer(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    # One connection, held by a stalled query longer than connect_timeout: the
    # create waits for it (that wait is not connecting) and is sent once.
    server.inject(Fault.stall(0.6), on="query")
    async with ba.BananaClient(
        API_KEY,
        base_url=server.url,
        clock=clock,
        connection_limit=1,
        connect_timeout=0.2,
        timeout=2.0,
        max_retries=0,
    ) as client:
        query = asyncio.create_task(client.get("missing"))
        await asyncio.sleep(0.05)
        task = await client.create("a cat")
        with pytest.raises(ba.NotFoundError):
            await query
    assert server.count("create") == 1
    assert list(server.tasks) == [task.id]


# -- queries: retried freely on transient failures ----------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(500),
        Fault.status(502),
        Fault.status(503),
        Fault.status(504),
        Fault.status(408),
        Fault.status(429),
        Fault.html(502),
        Fault.stall(5.0),
    ],
    ids=["500", "502", "503", "504", "408", "429", "html-502", "stall"],
)
async def test_query_transient_failures_are_retried(
    retrying: ba.BananaClient, server: FakeBananaServer, clock: FakeClock, fault: Fault
) -> None:
    task = await retrying.create("a cat")
    server.inject(fault, on="query", times=2)
    got = await retrying.get(task.id)
    assert got.id == task.id
    assert server.count("query") == 3
    assert all(0 <= s <= MAX_RETRY_DELAY for s in clock.sleeps)
    if fault.status_code == 429:
        # Besides the retry delays, the whole client paused after each 429.
        assert sum(clock.sleeps) >= 2 * _pause(retrying) - 1e-9
    else:
        assert len(clock.sleeps) == 2


async def test_query_reset_is_retried(retrying: ba.BananaClient, server: FakeBananaServer) -> None:
    task = await retrying.create("a cat")
    # aiohttp itself re-sends an idempotent GET once on a dropped keep-alive
    # connection, so two resets make one failure that the client sees.
    server.inject(Fault.reset(), on="query", times=2)
    got = await retrying.get(task.id)
    assert got.id == task.id
    assert server.count("query") == 3


async def test_query_gives_up_after_max_retries(
    retrying: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    server.inject(Fault.status(503), on="query", times=10)
    with pytest.raises(ba.ServerError) as info:
        await retrying.get("abc")
    assert info.value.status_code == 503
    assert server.count("query") == 4
    # Exponential ceilings 0.5, 1, 2 with full jitter.
    assert [s <= c for s, c in zip(clock.sleeps, [0.5, 1.0, 2.0], strict=True)] == [True] * 3


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.status(400), ba.BadRequestError),
        (Fault.status(401), ba.AuthenticationError),
        (Fault.status(403), ba.AuthenticationError),
        (Fault.status(404), ba.NotFoundError),
        (Fault.status(422), ba.BadRequestError),
        (Fault.body('{"code": "204", "msg": "login verification failed"}'), ba.ProviderError),
    ],
)
async def test_query_permanent_failures_are_not_retried(
    retrying: ba.BananaClient,
    server: FakeBananaServer,
    fault: Fault,
    error: type[ba.BananaError],
) -> None:
    server.inject(fault, on="query")
    with pytest.raises(error):
        await retrying.get("abc")
    assert server.count("query") == 1


async def test_retry_after_http_date_and_cap(
    retrying: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    task = await retrying.create("a cat")
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server.inject(Fault.status(503, headers={"Retry-After": soon}), on="query")
    server.inject(Fault.status(429, headers={"Retry-After": "86400"}), on="query")
    await retrying.get(task.id)
    assert 25 <= clock.sleeps[0] <= 31
    assert clock.sleeps[1] == MAX_RETRY_AFTER


async def test_max_retries_zero_means_one_attempt(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    server.inject(Fault.status(503), on="query")
    async with ba.BananaClient(API_KEY, base_url=server.url, clock=clock, max_retries=0) as c:
        with pytest.raises(ba.ServerError):
            await c.get("abc")
    assert server.count("query") == 1
