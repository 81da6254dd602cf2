"""Rate limits over loopback: the client against the fake provider's per-key budget.

These run on the real clock (a batch has many sleepers at once, which a
virtual clock cannot order), at rates high enough to take a few seconds.
They assert what happened, never how fast.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import Counter

import pytest

import banana_async as ba
from banana_async.ratelimit import AdaptiveRateLimiter
from banana_async.testing import FakeBananaServer, FakeClock, Fault, RequestBudget, TaskScript

from .conftest import API_KEY, live_client


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
async def test_no_prompt_is_lost_to_a_rate_limited_key(
    live: FakeBananaServer, retry_after: bool
) -> None:
    live.budget = RequestBudget(rate=60.0, burst=10.0, retry_after=retry_after)
    count = 120
    errors: Counter[str] = Counter()
    async with live_client(live, poll_interval=0.05) as client:
        prompts = [f"cat {i}" for i in range(count)]
        async with contextlib.aclosing(client.generate_many(prompts, concurrency=80)) as outcomes:
            async for outcome in outcomes:
                if not outcome.ok:
                    errors[type(outcome.error).__name__] += 1
        limiter = client._limiter
    assert errors == Counter()
    assert len(live.tasks) == count  # every prompt created once, none twice
    assert live.count_rate_limited() > 0  # the budget did bind
    assert isinstance(limiter, AdaptiveRateLimiter)
    assert limiter.provider_limit is not None
    # 429s are the exception, not the rule (today's code: over half).
    assert live.count_rate_limited() < 0.15 * len(live.requests)


async def _hammer(client: ba.BananaClient, task_id: str, until: float) -> None:
    """Query a task again and again until ``until`` (loop time), as a busy batch would."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        with contextlib.suppress(ba.RateLimitError):
            await client.get(task_id)


async def test_the_learned_rate_settles_under_the_limit_and_climbs_when_it_rises(
    live: FakeBananaServer,
) -> None:
    live.budget = RequestBudget(rate=40.0, burst=10.0)
    loop = asyncio.get_running_loop()
    async with live_client(live) as client:
        task = await client.create("a cat")
        limiter = client._limiter
        assert isinstance(limiter, AdaptiveRateLimiter)
        await asyncio.gather(*(_hammer(client, task.id, loop.time() + 4.0) for _ in range(30)))
        assert limiter.provider_limit is not None
        assert limiter.provider_limit <= 40.0 * 1.2
        assert limiter.rate is not None
        assert limiter.rate <= 40.0 * 1.2
        learned = limiter.provider_limit
        live.budget = RequestBudget(rate=200.0, burst=20.0)
        await asyncio.gather(*(_hammer(client, task.id, loop.time() + 8.0) for _ in range(30)))
        # It climbed well past the old limit, back to where 429s come again.
        assert limiter.rate is None or limiter.rate > 1.5 * learned


async def test_a_configured_cap_is_never_exceeded_over_loopback(live: FakeBananaServer) -> None:
    async with live_client(live, requests_per_second=25.0) as client:
        prompts = [f"cat {i}" for i in range(40)]
        async for outcome in client.generate_many(prompts, concurrency=40):
            assert outcome.ok
    times = sorted(r.at for r in live.requests if r.kind in ("create", "query"))
    assert len(times) >= 80
    for i, start in enumerate(times):
        # From any request on, one second holds the rate and a burst of a second's worth.
        inside = bisect.bisect_left(times, start + 1.0) - i
        assert inside <= 2 * 25, (start - times[0], inside)
    assert live.count_rate_limited() == 0


async def test_generate_sends_a_429d_create_again_until_it_goes_through(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    server.inject(Fault.status(429, headers={"Retry-After": "2"}), on="create", times=12)
    server.plan(TaskScript(queries=1))
    async with ba.BananaClient(API_KEY, base_url=server.url, clock=clock, max_retries=1) as client:
        task = await client.generate("a cat", timeout=60.0)
    assert task.ok
    assert server.count("create") == 13  # 12 refusals and the one that went through
    assert len(server.tasks) == 1


async def test_a_batch_sends_a_429d_create_again_until_its_deadline(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    server.inject(Fault.status(429, headers={"Retry-After": "5"}), on="create", times=100)
    async with ba.BananaClient(API_KEY, base_url=server.url, clock=clock, max_retries=1) as client:
        outcomes = [o async for o in client.generate_many(["a cat"], timeout=30.0)]
    (outcome,) = outcomes
    # Only the deadline ended it: as many tries as 30 s of 5 s pauses allow, not max_retries.
    assert isinstance(outcome.error, ba.RateLimitError)
    assert 5 <= server.count("create") <= 7
    assert server.tasks == {}


async def test_a_limiter_given_to_the_client_is_the_one_used(server: FakeBananaServer) -> None:
    limiter = AdaptiveRateLimiter(requests_per_second=1000.0)
    async with ba.BananaClient(API_KEY, base_url=server.url, rate_limiter=limiter) as client:
        await client.create("a cat")
        assert client.rate_limiter is limiter
    with pytest.raises(ba.InvalidRequestError, match="requests_per_second"):
        ba.BananaClient(API_KEY, rate_limiter=limiter, requests_per_second=5.0)
    with pytest.raises(ba.InvalidRequestError, match="RateLimiter"):
        ba.BananaClient(API_KEY, rate_limiter=object())  # type: ignore[arg-type]
