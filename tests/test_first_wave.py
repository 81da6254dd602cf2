"""The first wave of a batch: scouts poll, the other tasks hold their first poll.

Real loopback HTTP against the fake provider, on a virtual clock shared by
the client and the server (:class:`~tests.conftest.SharedClock`, exact with
many waits at once), so that nothing sleeps on the wall clock.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

import banana_async as ba
from banana_async._polling import MAX_HOLD, POLL_JITTER, SCOUTS
from banana_async.ratelimit import AdaptiveRateLimiter
from banana_async.testing import FakeBananaServer, TaskScript

from .conftest import API_KEY, SharedClock

INTERVAL = 2.0
LATE = INTERVAL * (1 + POLL_JITTER)
"""The latest a poll spaced by the interval comes: jitter only lengthens a delay."""


@pytest.fixture
def shared_clock() -> SharedClock:
    return SharedClock()


@pytest.fixture
async def provider(shared_clock: SharedClock) -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=API_KEY, duration=None, clock=shared_clock.time) as srv:
        yield srv


@contextlib.asynccontextmanager
async def open_client(
    server: FakeBananaServer, clock: SharedClock, **options: Any
) -> AsyncIterator[ba.BananaClient]:
    # A limiter that never sleeps: the learning one's ramp of creates would
    # be a sleeper that the SharedClock does not know, and these tests are
    # about polling alone.
    settings: dict[str, Any] = {
        "poll_interval": INTERVAL,
        "timeout": 5.0,
        "rate_limiter": AdaptiveRateLimiter(learn=False, clock=clock),
        **options,
    }
    async with ba.BananaClient(API_KEY, base_url=server.url, clock=clock, **settings) as client:
        yield client


def spread(count: int) -> list[float]:
    """Durations of 5 to 15 s in a fixed shuffled order (the first ones are not the shortest)."""
    return [5.0 + 10.0 * ((i * 37) % count) / count for i in range(count)]


async def create_all(client: ba.BananaClient, count: int) -> list[ba.Task]:
    return [await client.create(f"task {i}") for i in range(count)]


def query_times(server: FakeBananaServer, task_id: str) -> list[float]:
    return sorted(r.at for r in server.requests if r.kind == "query" and r.task_id == task_id)


def first_query_after_create(server: FakeBananaServer, tasks: Sequence[ba.Task]) -> list[float]:
    return [query_times(server, t.id)[0] - server.tasks[t.id].created_at for t in tasks]


async def test_a_first_wave_spends_far_fewer_queries(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    durations = spread(100)
    provider.plan(*(TaskScript(duration=d) for d in durations))
    seen: dict[str, float] = {}

    async def wait(client: ba.BananaClient, task: ba.Task) -> ba.Task:
        done = await client.wait(task)
        seen[task.id] = shared_clock.now
        return done

    async with open_client(provider, shared_clock) as client:
        tasks = await create_all(client, len(durations))
        results = await shared_clock.run(*(wait(client, t) for t in tasks))
    assert all(isinstance(r, ba.Task) and r.ok for r in results)
    # Polled from its creation, every interval (plus jitter), a task of d
    # seconds needs at least d / LATE polls: about 5 on average here.
    at_the_interval = sum(math.ceil(d / LATE) for d in durations)
    assert provider.count("query") <= 0.7 * at_the_interval
    # ... and the queries saved do not come out of the time to see a task done.
    delays = [
        seen[t.id] - (provider.tasks[t.id].created_at + d)
        for t, d in zip(tasks, durations, strict=True)
    ]
    assert min(delays) >= 0
    assert statistics.fmean(delays) <= 1.5


async def test_only_the_scouts_poll_from_the_start(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    provider.plan(*(TaskScript(duration=d) for d in spread(60)))
    async with open_client(provider, shared_clock) as client:
        tasks = await create_all(client, 60)
        results = await shared_clock.run(*(client.wait(t) for t in tasks))
    assert all(isinstance(r, ba.Task) and r.ok for r in results)
    firsts = first_query_after_create(provider, tasks)
    # The first SCOUTS waits started poll one interval after their creation,
    # as every task did before; the others held their first poll.
    assert all(INTERVAL <= f <= LATE for f in firsts[:SCOUTS])
    assert all(f > LATE for f in firsts[SCOUTS:])


async def test_the_lead_scouts_spread_their_second_polls_over_one_interval(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    provider.plan(*[TaskScript(duration=20.0)] * SCOUTS)
    async with open_client(provider, shared_clock, timeout=60.0) as client:
        tasks = await create_all(client, SCOUTS)
        results = await shared_clock.run(*(client.wait(t) for t in tasks))
    assert all(isinstance(r, ba.Task) and r.ok for r in results)
    gaps = [
        [
            b - a
            for a, b in itertools.pairwise(
                [provider.tasks[t.id].created_at, *query_times(provider, t.id)]
            )
        ]
        for t in tasks
    ]
    assert all(len(g) >= 4 for g in gaps)  # created, then polled at least 4 times
    # Created together, polled first one interval later, all of them ...
    assert all(INTERVAL <= g[0] <= LATE for g in gaps)
    # ... then each waits once a little longer, by 0 to 15/16 of an interval,
    # so that their next polls look at the time line every 1/16 of one ...
    seconds = sorted(g[1] for g in gaps)
    assert seconds[0] >= INTERVAL
    assert seconds[-1] <= LATE + INTERVAL
    assert seconds[-1] - seconds[0] >= INTERVAL * (SCOUTS - 2) / SCOUTS
    # ... and after that polls at the interval again.
    assert all(INTERVAL <= gap <= LATE for g in gaps for gap in g[2:])


async def test_held_tasks_never_poll_faster_than_the_interval(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    durations = spread(60)
    provider.plan(*(TaskScript(duration=d) for d in durations))
    async with open_client(provider, shared_clock) as client:
        tasks = await create_all(client, len(durations))
        results = await shared_clock.run(*(client.wait(t) for t in tasks))
    assert all(isinstance(r, ba.Task) and r.ok for r in results)
    for task in tasks:
        created = provider.tasks[task.id].created_at
        times = [created, *query_times(provider, task.id)]
        assert len(times) >= 2  # every task, held or not, was polled
        assert all(b - a >= INTERVAL for a, b in itertools.pairwise(times))


async def test_the_next_wave_aims_from_what_the_first_one_taught(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    provider.plan(*(TaskScript(duration=d) for d in spread(40) * 2))
    async with open_client(provider, shared_clock) as client:
        first = await create_all(client, 40)
        await shared_clock.run(*(client.wait(t) for t in first))
        second = await create_all(client, 40)
        results = await shared_clock.run(*(client.wait(t) for t in second))
    assert all(isinstance(r, ba.Task) and r.ok for r in results)
    # No scouts, no holding: every first poll is aimed at the learned
    # duration, well after one interval, since no task takes less than 5 s.
    assert all(f >= 2 * INTERVAL for f in first_query_after_create(provider, second))


async def test_scouts_that_never_finish_hold_the_others_no_longer_than_the_bound(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    stuck = [TaskScript(duration=None)] * SCOUTS
    provider.plan(*stuck, *[TaskScript(duration=8.0)] * 30)
    async with open_client(provider, shared_clock) as client:
        tasks = await create_all(client, SCOUTS + 30)
        results = await shared_clock.run(*(client.wait(t, timeout=300) for t in tasks))
    assert all(isinstance(r, ba.TaskTimeoutError) for r in results[:SCOUTS])
    assert all(isinstance(r, ba.Task) and r.ok for r in results[SCOUTS:])
    held = first_query_after_create(provider, tasks[SCOUTS:])
    # Held while the scouts said nothing, then polled: within the bound.
    assert all(8.0 < f <= MAX_HOLD * INTERVAL + LATE for f in held)


async def test_scouts_that_fail_make_room_for_others(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    failing = [TaskScript(duration=3.0, outcome="fail")] * SCOUTS
    provider.plan(*failing, *[TaskScript(duration=8.0)] * 30)
    async with open_client(provider, shared_clock) as client:
        tasks = await create_all(client, SCOUTS + 30)
        results = await shared_clock.run(*(client.wait(t) for t in tasks))
    assert all(isinstance(r, ba.TaskFailedError) for r in results[:SCOUTS])
    assert all(isinstance(r, ba.Task) and r.ok for r in results[SCOUTS:])
    # A failed task teaches no duration, but its place goes to a held task,
    # which scouts in turn: nobody waits for the bound.
    assert max(first_query_after_create(provider, tasks[SCOUTS:])) < 6 * INTERVAL


async def test_the_deadline_ends_a_hold(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    provider.plan(*[TaskScript(duration=None)] * (SCOUTS + 10))
    start = shared_clock.now
    async with open_client(provider, shared_clock) as client:
        tasks = await create_all(client, SCOUTS + 10)
        results = await shared_clock.run(*(client.wait(t, timeout=30) for t in tasks))
    assert all(isinstance(r, ba.TaskTimeoutError) for r in results)
    held = results[SCOUTS:]
    assert all(isinstance(r, ba.TaskTimeoutError) and r.task in tasks for r in held)
    assert all(not query_times(provider, t.id) for t in tasks[SCOUTS:])  # held to the end
    assert shared_clock.now == pytest.approx(start + 30)


async def test_a_bare_id_is_polled_at_once_even_while_others_hold(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    provider.plan(*(TaskScript(duration=d) for d in spread(41)))
    async with open_client(provider, shared_clock) as client:
        tasks = await create_all(client, 41)
        start = shared_clock.now
        waits = [client.wait(t) for t in tasks[:-1]]
        results = await shared_clock.run(*waits, client.wait(tasks[-1].id))
    assert all(isinstance(r, ba.Task) and r.ok for r in results)
    assert query_times(provider, tasks[-1].id)[0] == start


async def test_without_adaptive_polling_no_task_holds(
    provider: FakeBananaServer, shared_clock: SharedClock
) -> None:
    provider.plan(*(TaskScript(duration=d) for d in spread(40)))
    async with open_client(provider, shared_clock, adaptive_polling=False) as client:
        tasks = await create_all(client, 40)
        results = await shared_clock.run(*(client.wait(t) for t in tasks))
    assert all(isinstance(r, ba.Task) and r.ok for r in results)
    assert all(INTERVAL <= f <= LATE for f in first_query_after_create(provider, tasks))
