"""Adaptive polling learns task durations without the time polls wait for a turn.

A 429 pause holds every request (in every process, when the budget is shared
through Redis); the polls it held saw their tasks finished late, and that
lateness is not the tasks' duration. On a virtual clock shared with the fake
provider, one task at a time, so the clock is exact.
"""

from __future__ import annotations

import banana_async as ba
from banana_async.ratelimit import AdaptiveRateLimiter
from banana_async.testing import FakeBananaServer, FakeClock

from .conftest import API_KEY

DURATION = 1.0
PAUSE = 6.0


async def test_a_pause_that_held_the_polls_is_not_learned_as_task_duration() -> None:
    clock = FakeClock()
    async with FakeBananaServer(api_key=API_KEY, duration=DURATION, clock=clock.time) as server:
        limiter = AdaptiveRateLimiter(learn=False, clock=clock)
        async with ba.BananaClient(
            API_KEY, base_url=server.url, clock=clock, rate_limiter=limiter, poll_interval=0.5
        ) as client:
            for i in range(12):
                task = await client.create(f"cat {i}")
                # Another process met a 429: the shared pause holds this one's polls.
                await limiter.pause(PAUSE)
                assert (await client.wait(task)).ok
            last = await client.create("the next cat")
            assert (await client.wait(last)).ok
        first_poll = min(
            r.at for r in server.requests if r.task_id == last.id and r.kind == "query"
        )
    # Aimed no later than the tasks took (1 s), not at when the pause let the polls go.
    waited = first_poll - server.tasks[last.id].created_at
    assert waited < PAUSE / 2, waited
