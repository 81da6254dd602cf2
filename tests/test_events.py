"""Status events (``on_status=``): once at creation, once per status change, in order."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, FakeClock, TaskScript

from .conftest import API_KEY, live_client

Q, P, C, F = (
    ba.TaskStatus.QUEUED,
    ba.TaskStatus.PROCESSING,
    ba.TaskStatus.COMPLETED,
    ba.TaskStatus.FAILED,
)


def steps(events: list[ba.TaskEvent]) -> list[tuple[ba.TaskStatus | None, ba.TaskStatus]]:
    return [(event.previous, event.task.status) for event in events]


# -- one task -------------------------------------------------------------------------


async def test_generate_reports_the_creation_then_each_change_not_each_poll(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    # Three polls (processing, processing, completed) make two changes.
    server.plan(TaskScript(queries=3))
    events: list[ba.TaskEvent] = []
    task = await client.generate("a cat", on_status=events.append)
    assert server.count("query") == 3
    assert steps(events) == [(None, Q), (Q, P), (P, C)]
    assert {event.task.id for event in events} == {task.id}
    assert all(event.index is None for event in events)
    assert events[-1].task == task


async def test_a_failed_task_reports_its_failure_before_the_error(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(queries=2, outcome="fail", error="content policy"))
    events: list[ba.TaskEvent] = []
    with pytest.raises(ba.TaskFailedError) as caught:
        await client.generate("a cat", on_status=events.append)
    assert steps(events) == [(None, Q), (Q, P), (P, F)]
    assert events[-1].task == caught.value.task
    assert events[-1].task.error == "content policy"


async def test_wait_counts_changes_from_the_task_it_is_given(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(queries=2))
    task = await client.create("a cat")
    events: list[ba.TaskEvent] = []
    await client.wait(task, on_status=events.append)
    assert steps(events) == [(Q, P), (P, C)]


async def test_wait_on_a_bare_id_reports_its_first_answer_without_a_previous_status(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(queries=2))
    task = await client.create("a cat")
    events: list[ba.TaskEvent] = []
    await client.wait(task.id, on_status=events.append)
    assert steps(events) == [(None, P), (P, C)]


async def test_waiting_on_a_finished_task_reports_nothing(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(duration=0.0))
    done = await client.wait(await client.create("a cat"))
    events: list[ba.TaskEvent] = []
    assert await client.wait(done, on_status=events.append) is done
    assert events == []


async def test_a_timed_out_wait_reports_only_what_it_saw(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    server.plan(TaskScript(duration=None))
    events: list[ba.TaskEvent] = []
    with pytest.raises(ba.TaskTimeoutError):
        await client.generate("a cat", timeout=9.0, on_status=events.append)
    # Several polls, all "processing": one change.
    assert server.count("query") >= 2
    assert steps(events) == [(None, Q), (Q, P)]


async def test_the_client_listener_hears_every_task_before_the_call_listener(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    heard: list[tuple[str, ba.TaskStatus | None, ba.TaskStatus]] = []

    def listener(name: str) -> ba.OnStatus:
        def on_status(event: ba.TaskEvent) -> None:
            heard.append((name, event.previous, event.task.status))

        return on_status

    async with ba.BananaClient(
        API_KEY, base_url=server.url, clock=clock, on_status=listener("client")
    ) as client:
        server.plan(TaskScript(queries=2))
        task = await client.create("made by create")  # only the client's listener
        await client.wait(task, on_status=listener("wait"))
        server.plan(TaskScript(queries=1))
        await client.generate("made by generate", on_status=listener("generate"))
        server.plan(TaskScript(queries=1))
        await client.generate("no listener of its own")
    assert heard == [
        ("client", None, Q),
        ("client", Q, P),
        ("wait", Q, P),
        ("client", P, C),
        ("wait", P, C),
        ("client", None, Q),
        ("generate", None, Q),
        ("client", Q, C),
        ("generate", Q, C),
        ("client", None, Q),
        ("client", Q, C),
    ]


async def test_async_listeners_are_awaited_in_order(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(queries=3))
    events: list[ba.TaskEvent] = []
    started: list[ba.TaskStatus] = []

    async def on_status(event: ba.TaskEvent) -> None:
        started.append(event.task.status)
        await asyncio.sleep(0)  # the wait goes on only once this returns
        events.append(event)

    await client.generate("a cat", on_status=on_status)
    assert steps(events) == [(None, Q), (Q, P), (P, C)]
    assert started == [Q, P, C]


class Recorder:
    """A callable object with an async ``__call__``: awaited like a coroutine function."""

    def __init__(self) -> None:
        self.statuses: list[ba.TaskStatus] = []

    async def __call__(self, event: ba.TaskEvent) -> None:
        self.statuses.append(event.task.status)


async def test_a_callable_object_with_an_async_call_is_awaited(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(queries=2))
    recorder = Recorder()
    await client.generate("a cat", on_status=recorder)
    assert recorder.statuses == [Q, P, C]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_listener_that_raises_is_logged_and_the_wait_goes_on(
    client: ba.BananaClient,
    server: FakeBananaServer,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    server.plan(TaskScript(queries=2))
    after: list[ba.TaskStatus] = []

    def broken_sync(event: ba.TaskEvent) -> None:
        raise RuntimeError(f"listener bug near {API_KEY}")

    async def broken_async(event: ba.TaskEvent) -> None:
        await asyncio.sleep(0)
        raise RuntimeError(f"listener bug near {API_KEY}")

    async with ba.BananaClient(
        API_KEY,
        base_url=server.url,
        clock=FakeClock(),
        on_status=broken_sync if kind == "sync" else broken_async,
    ) as same_server:
        with caplog.at_level(logging.WARNING, logger="banana_async"):
            task = await same_server.generate(
                "a cat", on_status=lambda event: after.append(event.task.status)
            )
    assert task.ok
    # The client's listener failed three times; the call's still heard everything.
    assert after == [Q, P, C]
    warnings = [r for r in caplog.records if r.name == "banana_async" and r.levelname == "WARNING"]
    assert len(warnings) == 3
    assert all("on_status callback" in r.getMessage() for r in warnings)
    assert all("RuntimeError" in r.getMessage() for r in warnings)
    assert task.id in warnings[0].getMessage()
    assert API_KEY not in caplog.text


async def test_an_on_status_that_is_not_callable_is_refused_at_once(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    bad: Any = "print"
    with pytest.raises(ba.InvalidRequestError, match="on_status must be a function"):
        ba.BananaClient(API_KEY, on_status=bad)
    with pytest.raises(ba.InvalidRequestError, match="on_status"):
        await client.generate("a cat", on_status=bad)
    with pytest.raises(ba.InvalidRequestError, match="on_status"):
        client.generate_many(["a cat"], on_status=bad)
    assert server.count("create") == 0


# -- batches --------------------------------------------------------------------------


def by_index(events: list[ba.TaskEvent]) -> dict[int, list[ba.TaskEvent]]:
    grouped: dict[int, list[ba.TaskEvent]] = defaultdict(list)
    for event in events:
        assert event.index is not None
        grouped[event.index].append(event)
    return grouped


async def test_generate_many_reports_each_input_in_order_with_its_index(
    live: FakeBananaServer,
) -> None:
    def script(body: dict[str, Any]) -> TaskScript:
        if body["prompt"].startswith("bad"):
            return TaskScript(queries=2, outcome="fail")
        return TaskScript(queries=3)

    live.script_for = script
    prompts = [f"bad {i}" if i % 5 == 0 else f"good {i}" for i in range(20)]
    events: list[ba.TaskEvent] = []
    outcomes: dict[int, ba.Outcome] = {}
    async with live_client(live, poll_interval=0.01) as client:
        async for outcome in client.generate_many(prompts, concurrency=6, on_status=events.append):
            outcomes[outcome.index] = outcome
    grouped = by_index(events)
    assert sorted(grouped) == list(range(20))
    for index, seen in grouped.items():
        task = outcomes[index].task
        assert task is not None
        assert {event.task.id for event in seen} == {task.id}
        end = F if prompts[index].startswith("bad") else C
        assert steps(seen) == [(None, Q), (Q, P), (P, end)]
        # The last event is the task the outcome carries.
        assert seen[-1].task == task
    # Once per change, not per poll: the good ones were polled 3 times, with 2 changes.
    assert live.count("query") == 16 * 3 + 4 * 2


async def test_generate_many_tells_the_client_listener_first(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(queries=2)
    heard: list[tuple[str, int | None, ba.TaskStatus]] = []

    async def client_level(event: ba.TaskEvent) -> None:
        heard.append(("client", event.index, event.task.status))

    def call_level(event: ba.TaskEvent) -> None:
        heard.append(("call", event.index, event.task.status))

    async with live_client(live, on_status=client_level) as client:
        outcomes = [o async for o in client.generate_many(["a", "b", "c"], on_status=call_level)]
    assert all(outcome.ok for outcome in outcomes)
    assert len(heard) == 2 * 3 * 3
    # Each client-level event is followed at once by the same event for the call.
    for first, second in zip(heard[::2], heard[1::2], strict=True):
        assert first[0] == "client"
        assert second == ("call", *first[1:])


async def test_a_raising_listener_never_ends_a_batch(
    live: FakeBananaServer, caplog: pytest.LogCaptureFixture
) -> None:
    live.script_for = lambda body: TaskScript(queries=2)

    async def broken(event: ba.TaskEvent) -> None:
        raise ValueError("listener bug")

    with caplog.at_level(logging.WARNING, logger="banana_async"):
        async with live_client(live) as client:
            outcomes = [
                o async for o in client.generate_many([f"p{i}" for i in range(8)], on_status=broken)
            ]
    assert len(outcomes) == 8
    assert all(outcome.ok for outcome in outcomes)
    assert sum("on_status callback" in r.getMessage() for r in caplog.records) == 8 * 3


async def test_nothing_is_left_running_when_the_client_closes(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=None)
    heard: list[ba.TaskStatus] = []

    async def slow(event: ba.TaskEvent) -> None:
        await asyncio.sleep(0.01)
        heard.append(event.task.status)

    async with live_client(live, on_status=slow) as client:
        batch = client.generate_many([f"p{i}" for i in range(5)], on_status=slow)

        async def read() -> None:
            async for _ in batch:
                pass

        # Stopped while every task is still processing, listeners mid-sleep or not.
        running = [
            asyncio.create_task(read()),
            asyncio.create_task(client.generate("one more", on_status=slow)),
        ]
        await asyncio.sleep(0.2)
        for task in running:
            task.cancel()
        results = await asyncio.gather(*running, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in results)
    # Every event was delivered in place: no listener task outlives the client.
    # (The fake provider's connection handlers run in this loop too.)
    left = [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
        and getattr(task.get_coro(), "__qualname__", "") != "RequestHandler.start"
    ]
    assert left == []
    assert heard


async def test_a_resumed_batch_reports_changes_from_the_journal_and_no_creation(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    live.script_for = lambda body: TaskScript(duration=None)
    journal = tmp_path / "batch.sqlite"
    prompts = ["a", "b", "c"]
    first: list[ba.TaskEvent] = []
    async with live_client(live) as client:
        outcomes = [
            o
            async for o in client.generate_many(
                prompts, journal=journal, timeout=0.2, on_status=first.append
            )
        ]
    assert all(isinstance(o.error, ba.TaskTimeoutError) for o in outcomes)
    grouped = by_index(first)
    assert sorted(grouped) == [0, 1, 2]
    assert all(steps(seen) == [(None, Q), (Q, P)] for seen in grouped.values())
    for task in live.tasks.values():
        live.finish(task.id)
    second: list[ba.TaskEvent] = []
    async with live_client(live) as client:
        resumed = [
            o async for o in client.generate_many(prompts, journal=journal, on_status=second.append)
        ]
    assert all(outcome.ok for outcome in resumed)
    assert live.count("create") == 3  # nothing created twice
    # The journal recorded each task as created (queued): the next change is to completed.
    grouped = by_index(second)
    assert sorted(grouped) == [0, 1, 2]
    assert all(steps(seen) == [(Q, C)] for seen in grouped.values())
    third: list[ba.TaskEvent] = []
    async with live_client(live) as client:
        reported = [
            o async for o in client.generate_many(prompts, journal=journal, on_status=third.append)
        ]
    # Outcomes read from the journal: nothing was seen, nothing is reported.
    assert all(outcome.from_journal for outcome in reported)
    assert third == []


async def test_a_slow_listener_counts_against_the_deadline_but_never_times_out_a_finished_task(
    live: FakeBananaServer,
) -> None:
    async def slow_at(status: ba.TaskStatus, event: ba.TaskEvent) -> None:
        if event.task.status is status:
            await asyncio.sleep(1.5)

    async with live_client(live) as client:
        # Slow on "completed": the task is finished, the deadline no longer matters.
        live.plan(TaskScript(queries=2))
        task = await client.generate(
            "a cat", timeout=1.0, on_status=lambda event: slow_at(C, event)
        )
        assert task.ok
        # Slow on "processing": the wait is still on, and its deadline passes.
        live.plan(TaskScript(queries=2))
        with pytest.raises(ba.TaskTimeoutError) as caught:
            await client.generate("a dog", timeout=1.0, on_status=lambda event: slow_at(P, event))
        assert caught.value.task is not None
        assert caught.value.task.status is P
