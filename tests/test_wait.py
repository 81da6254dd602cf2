"""Polling: spacing, deadlines, transient failures, cancellation."""

from __future__ import annotations

import asyncio

import pytest

import banana_async as ba
from banana_async._polling import POLL_JITTER
from banana_async.testing import FakeBananaServer, FakeClock, Fault, TaskScript

from .conftest import API_KEY, SharedClock


def _spacing_ok(sleeps: list[float], interval: float) -> bool:
    return all(interval <= s <= interval * (1 + POLL_JITTER) for s in sleeps)


async def test_polls_no_faster_than_the_interval(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    server.plan(TaskScript(duration=11.0))
    task = await client.create("a cat")
    start = clock.now
    done = await client.wait(task)
    assert done.ok
    assert _spacing_ok(clock.sleeps, 2.0)
    # Seen soon after it finished at start+11: never more than one interval late.
    assert 11.0 <= clock.now - start <= 11.0 + 2.0 * (1 + POLL_JITTER)
    assert server.count("query") == len(clock.sleeps)


async def test_poll_interval_per_call(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    server.plan(TaskScript(duration=1.0))
    task = await client.create("a cat")
    await client.wait(task, poll_interval=0.05)
    assert _spacing_ok(clock.sleeps, 0.05)
    # 1 s of work at 0.05 s to 0.0625 s per poll: 16 to 20 sleeps, one more to see it.
    assert 16 <= len(clock.sleeps) <= 21


async def test_small_intervals_work_on_the_real_clock(server: FakeBananaServer) -> None:
    server.plan(TaskScript(duration=None))
    async with ba.BananaClient(API_KEY, base_url=server.url, poll_interval=0.01) as client:
        task = await client.create("a cat")
        waiter = asyncio.create_task(client.wait(task))
        await asyncio.sleep(0.1)
        server.finish(task.id)
        done = await waiter
    assert done.ok
    assert server.count("query") >= 2


async def test_wait_on_a_bare_id_polls_at_once(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    server.plan(TaskScript(duration=0.0))
    task = await client.create("a cat")
    done = await client.wait(task.id)
    assert done.ok
    assert clock.sleeps == []
    assert server.count("query") == 1


async def test_wait_on_a_finished_task_sends_nothing(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(duration=0.0))
    task = await client.get((await client.create("a cat")).id)
    before = len(server.requests)
    assert (await client.wait(task)) is task
    failed = ba.Task(id="x", status=ba.TaskStatus.FAILED, raw_status="failed", error="nope")
    with pytest.raises(ba.TaskFailedError):
        await client.wait(failed)
    assert len(server.requests) == before


async def test_deadline_ends_in_task_timeout_with_last_task(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    task = await client.create("a cat")  # never finishes (duration=None)
    start = clock.now
    with pytest.raises(ba.TaskTimeoutError) as info:
        await client.wait(task, timeout=30)
    assert clock.now - start == pytest.approx(30.0)
    assert info.value.task is not None
    assert info.value.task.status is ba.TaskStatus.PROCESSING
    assert info.value.task_id == task.id
    assert "30 s" in str(info.value)


async def test_one_deadline_covers_retries_and_polls(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    task = await client.create("a cat")
    server.inject(Fault.status(503, headers={"Retry-After": "50"}), on="query", times=100)
    start = clock.now
    with pytest.raises(ba.TaskTimeoutError) as info:
        await client.wait(task, timeout=120)
    assert clock.now - start == pytest.approx(120.0)
    assert info.value.task is task  # no status was ever read after the create


async def test_generate_deadline_keeps_the_created_task(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    with pytest.raises(ba.TaskTimeoutError) as info:
        await client.generate("a cat", timeout=10)
    assert info.value.task is not None
    assert info.value.task.id in server.tasks  # the billed task's id is not lost
    assert server.count("create") == 1


async def test_deadline_cuts_a_stalled_request(server: FakeBananaServer) -> None:
    task_server_stall = Fault.stall(30.0)
    async with ba.BananaClient(API_KEY, base_url=server.url, timeout=60) as client:
        task = await client.create("a cat")
        server.inject(task_server_stall, on="query")
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ba.TaskTimeoutError):
            await client.wait(task.id, timeout=0.3)
        assert loop.time() - start < 5.0


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(500),
        Fault.status(503),
        Fault.status(429, headers={"Retry-After": "4"}),
        Fault.html(502),
        Fault.body(b"{not json"),
        Fault.body(b"<html><title>Gateway Timeout</title></html>", content_type="text/html"),
        Fault.body(b'{"unexpected": true}'),
        Fault.stall(10.0),
    ],
    ids=["500", "503", "429", "html-502", "malformed", "html-200", "not-a-task", "stall"],
)
async def test_transient_errors_do_not_end_a_wait(
    server: FakeBananaServer, clock: FakeClock, fault: Fault
) -> None:
    async with ba.BananaClient(
        API_KEY, base_url=server.url, clock=clock, timeout=0.3, max_retries=0
    ) as client:
        server.plan(TaskScript(duration=7.0))
        task = await client.create("a cat")
        server.inject(fault, on="query", times=3)
        done = await client.wait(task, timeout=600)
    assert done.ok
    assert server.pending_faults == 0
    assert all(s >= 2.0 for s in clock.sleeps)  # never faster than the interval


async def test_permanent_error_ends_a_wait(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    task = await client.create("a cat")
    server.inject(Fault.status(401), on="query")
    with pytest.raises(ba.AuthenticationError):
        await client.wait(task)


async def test_unknown_status_words_keep_waiting(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(
        TaskScript(duration=9.0, status_words={"processing": "rendering", "completed": "SUCCEEDED"})
    )
    task = await client.create("a cat")
    seen = await client.get(task)
    assert seen.status is ba.TaskStatus.UNKNOWN
    assert seen.raw_status == "rendering"
    done = await client.wait(seen)
    assert done.ok
    assert done.raw_status == "SUCCEEDED"


async def test_unknown_status_injected_mid_wait(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(duration=9.0))
    task = await client.create("a cat")
    server.inject(Fault.status_word("Mystery-State"), on="query", times=2)
    assert (await client.wait(task)).ok


async def test_cancelling_a_wait_leaves_nothing_running(server: FakeBananaServer) -> None:
    async with ba.BananaClient(API_KEY, base_url=server.url, poll_interval=0.01) as client:
        task = await client.create("a cat")
        waiter = asyncio.create_task(client.wait(task))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # A query already on the wire at the cancel may still arrive: let it.
        await asyncio.sleep(0.05)
        queries = server.count("query")
        assert queries >= 1
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not [t for t in others if "banana_async" in repr(t.get_coro())]
        await asyncio.sleep(0.2)
        # Polling every 0.01 s would have sent about 20 more by now.
        assert server.count("query") == queries


async def test_cancelling_during_a_request(server: FakeBananaServer) -> None:
    server.inject(Fault.stall(30.0), on="query")
    async with ba.BananaClient(API_KEY, base_url=server.url) as client:
        waiter = asyncio.create_task(client.wait("abc"))
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


async def test_wait_arguments_are_checked(client: ba.BananaClient) -> None:
    with pytest.raises(ValueError, match="timeout"):
        await client.wait("abc", timeout=0)
    with pytest.raises(ValueError, match="poll_interval"):
        await client.wait("abc", poll_interval=-1)
    with pytest.raises(ba.InvalidRequestError, match="task id"):
        await client.wait("")


async def test_two_waits_on_one_created_task_both_return_it() -> None:
    clock = SharedClock()
    async with FakeBananaServer(api_key=API_KEY, duration=None, clock=clock.time) as server:
        server.plan(TaskScript(duration=5.0))
        async with ba.BananaClient(
            API_KEY, base_url=server.url, clock=clock, poll_interval=2.0
        ) as client:
            task = await client.create("a cat")
            results = await clock.run(client.wait(task), client.wait(task))
    assert all(isinstance(r, ba.Task) and r.ok for r in results), results
