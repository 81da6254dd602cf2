"""generate_many over real loopback HTTP: bounds, order, errors, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import banana_async as ba
from banana_async._polling import POLL_JITTER
from banana_async.testing import FakeBananaServer, FakeClock, Fault, TaskScript

from .conftest import batch_tasks, live_client


async def test_one_outcome_per_input(live: FakeBananaServer) -> None:
    prompts = [f"prompt {i}" for i in range(30)]
    async with live_client(live) as client:
        outcomes = [o async for o in client.generate_many(prompts, concurrency=5)]
    assert sorted(o.index for o in outcomes) == list(range(30))
    assert all(o.ok for o in outcomes)
    assert all(o.request is not None and o.request.prompt == prompts[o.index] for o in outcomes)
    assert {o.task.id for o in outcomes if o.task} == set(live.tasks)
    assert live.count("create") == 30
    assert batch_tasks() == []


async def test_concurrency_bounds_tasks_in_flight(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=0.1)
    async with live_client(live) as client:
        outcomes = [o async for o in client.generate_many(range_prompts(24), concurrency=4)]
    assert len(outcomes) == 24
    spans = [(t.created_at, t.finished_at) for t in live.tasks.values()]
    for start, _ in spans:
        running = sum(1 for s, f in spans if f is not None and s <= start < f)
        assert running <= 4
    assert max(sum(1 for s, f in spans if f is not None and s <= a < f) for a, _ in spans) >= 2


def range_prompts(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


async def test_outcomes_come_in_completion_order(live: FakeBananaServer) -> None:
    durations = {"slow": 0.6, "medium": 0.3, "fast": 0.0}
    live.script_for = lambda body: TaskScript(duration=durations[body["prompt"]])
    async with live_client(live) as client:
        order = [o.request.prompt async for o in client.generate_many(durations) if o.request]
    assert order == ["fast", "medium", "slow"]


async def test_failures_never_stop_the_batch(live: FakeBananaServer) -> None:
    def script(body: dict[str, Any]) -> TaskScript | None:
        if body["prompt"] == "forbidden":
            return TaskScript(outcome="fail", error="content policy violation")
        if body["prompt"] == "endless":
            return TaskScript(duration=None)
        return None

    live.script_for = script
    inputs: list[Any] = [
        "fine",
        "forbidden",
        "   ",
        42,
        ba.GenerationRequest("explicit", size="1:1"),
        "endless",
        "rejected",
    ]
    live.inject(Fault.status(400, body='{"error": "prompt rejected"}'), on="create")
    async with live_client(live) as client:
        # The 400 goes to whichever create comes first; send that one alone first.
        first = [o async for o in client.generate_many(["rejected"])]
        outcomes = {
            o.index: o async for o in client.generate_many(inputs[:-1], concurrency=3, timeout=0.5)
        }
    assert isinstance(first[0].error, ba.BadRequestError)
    assert first[0].task is None
    assert outcomes[0].ok
    assert isinstance(outcomes[1].error, ba.TaskFailedError)
    assert outcomes[1].error.error == "content policy violation"
    assert isinstance(outcomes[2].error, ba.InvalidRequestError)
    assert outcomes[2].request is None
    assert isinstance(outcomes[3].error, ba.InvalidRequestError)
    assert outcomes[4].ok
    assert outcomes[4].request == inputs[4]
    assert isinstance(outcomes[5].error, ba.TaskTimeoutError)
    assert outcomes[5].task is not None  # the created task is kept
    assert len(outcomes) == 6


async def test_defaults_apply_to_plain_prompts(live: FakeBananaServer) -> None:
    async with live_client(live) as client:
        outcomes = [
            o
            async for o in client.generate_many(
                ["a", ba.GenerationRequest("b")], model="nano-banana-pro", size="21:9"
            )
        ]
    bodies = {r.json["prompt"]: r.json for r in live.requests if r.kind == "create"}
    assert bodies["a"]["model"] == "nano-banana-pro"
    assert bodies["a"]["size"] == "21:9"
    assert bodies["b"]["model"] == "nano-banana-2"  # a full request is sent as given
    assert "size" not in bodies["b"]
    assert len(outcomes) == 2


async def test_bad_arguments_fail_at_once(live: FakeBananaServer) -> None:
    async with live_client(live) as client:
        with pytest.raises(ValueError, match="concurrency"):
            client.generate_many(["a"], concurrency=0)
        with pytest.raises(ba.InvalidRequestError, match="single string"):
            client.generate_many("a prompt")
        with pytest.raises(ba.InvalidRequestError, match="size"):
            client.generate_many(["a"], size="2:7")
        with pytest.raises(ba.InvalidRequestError, match="iterable of prompts, not int"):
            client.generate_many(42)  # type: ignore[arg-type]
        with pytest.raises(ba.InvalidRequestError, match="download_to must be a directory"):
            client.generate_many(["a"], download_to=123)  # type: ignore[arg-type]
        # No file system takes a NUL: each image would be paid for, then fail to save.
        with pytest.raises(ba.InvalidRequestError, match="NUL character"):
            client.generate_many(["a"], download_to="/tmp/x\0y")
        with pytest.raises(ba.InvalidRequestError, match="NUL character"):
            client.generate_many(["a"], download_to=Path("/tmp/x\0y"))
        with pytest.raises(ba.InvalidRequestError, match="journal must be a file path"):
            client.generate_many(["a"], journal=123)  # type: ignore[arg-type]
    assert live.requests == []


async def test_inputs_are_read_lazily(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=0.2)
    pulled = 0

    def prompts() -> Iterator[str]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield f"p{i}"

    async with live_client(live) as client:
        batch = client.generate_many(prompts(), concurrency=3)
        async with contextlib.aclosing(batch):
            first = await anext(batch)
            assert first.ok
            # 3 in flight plus room for 3 undelivered outcomes, and the one read
            # while waiting for room.
            assert pulled <= 2 * 3 + 1
    assert pulled < 20
    assert batch_tasks() == []


async def test_async_iterable_inputs(live: FakeBananaServer) -> None:
    async def prompts() -> AsyncIterator[str]:
        for i in range(5):
            await asyncio.sleep(0)
            yield f"p{i}"

    async with live_client(live) as client:
        outcomes = [o async for o in client.generate_many(prompts())]
    assert sorted(o.index for o in outcomes) == [0, 1, 2, 3, 4]


async def test_an_input_iterable_that_raises_ends_the_batch(live: FakeBananaServer) -> None:
    def prompts() -> Iterator[str]:
        yield "fine"
        raise OSError("disk gone")

    async with live_client(live) as client:
        with pytest.raises(OSError, match="disk gone"):
            _ = [o async for o in client.generate_many(prompts())]
    assert batch_tasks() == []


async def test_stopping_early_cancels_every_poller(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=0.0 if body["prompt"] == "p0" else None)
    async with live_client(live) as client:
        async with contextlib.aclosing(client.generate_many(range_prompts(10))) as batch:
            async for outcome in batch:
                assert outcome.index == 0
                break
        assert batch_tasks() == []
        await asyncio.sleep(0.05)  # let a query already on the wire land
        queries = live.count("query")
        await asyncio.sleep(0.2)
        assert live.count("query") == queries  # nobody polls any more


async def test_cancelling_the_consumer_cancels_every_poller(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=None)

    async with live_client(live) as client:

        async def consume() -> None:
            async for _ in client.generate_many(range_prompts(10)):
                pass

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        assert len(batch_tasks()) > 1
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert batch_tasks() == []


async def test_download_to_saves_each_image(live: FakeBananaServer, tmp_path: Path) -> None:
    out = tmp_path / "images"
    async with live_client(live) as client:
        outcomes = [o async for o in client.generate_many(range_prompts(6), download_to=out)]
    assert all(o.ok for o in outcomes)
    paths = sorted(o.path for o in outcomes if o.path)
    assert len(paths) == 6
    for outcome in outcomes:
        assert outcome.path is not None
        assert outcome.task is not None
        assert outcome.path.parent == out
        assert outcome.path.name == f"{outcome.task.id}.png"
        assert outcome.path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    images = [r for r in live.requests if r.kind == "image"]
    assert len(images) == 6
    assert all(r.authorization is None for r in images)  # the key stays with the API


async def test_a_failed_download_is_an_outcome_error(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    live.inject(Fault.body("<html>nope</html>", content_type="text/html"), on="image")
    async with live_client(live) as client:
        outcomes = [o async for o in client.generate_many(["a"], download_to=tmp_path)]
    assert isinstance(outcomes[0].error, ba.DownloadError)
    assert outcomes[0].task is not None
    assert outcomes[0].task.ok
    assert not outcomes[0].ok
    assert list(tmp_path.iterdir()) == []


async def test_requests_per_second_limits_the_whole_client(live: FakeBananaServer) -> None:
    async with live_client(live, requests_per_second=20.0) as client:
        outcomes = [o async for o in client.generate_many(range_prompts(8), concurrency=8)]
    assert all(o.ok for o in outcomes)
    times = sorted(r.at for r in live.requests if r.kind in ("create", "query"))
    # A bucket of 20 refilled at 20/s: requests beyond the first 20 come no
    # faster than the rate allows (a lower bound on time: immune to a slow machine).
    n = len(times)
    assert n >= 16
    if n > 20:
        assert times[-1] - times[0] >= (n - 20) / 20.0 * 0.9


async def test_a_429_pauses_every_request(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=1.5)
    async with live_client(live, poll_interval=0.05) as client:
        batch = client.generate_many(range_prompts(5), concurrency=5)
        async with contextlib.aclosing(batch):
            await asyncio.sleep(0.3)  # all five are polling now
            injected_at = live.now()
            live.inject(Fault.status(429, headers={"Retry-After": "1"}), on="query")
            outcomes = [o async for o in batch]
    assert all(o.ok for o in outcomes)
    # The fault went to the first query that arrived after it was injected.
    limited = next(r for r in live.requests if r.kind == "query" and r.at >= injected_at)
    # Requests already on the wire when the 429 arrived may land just after it;
    # after that nothing comes until the one-second pause is over.
    during = [r for r in live.requests if limited.at + 0.15 < r.at < limited.at + 0.9]
    assert during == []
    assert any(r.at >= limited.at + 1.0 for r in live.requests)


async def test_a_plain_break_cleans_up_soon_after(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=0.0 if body["prompt"] == "p0" else None)
    async with live_client(live) as client:
        async for outcome in client.generate_many(range_prompts(10)):
            assert outcome.index == 0
            break
        # Without aclosing, the event loop closes the abandoned generator.
        for _ in range(50):
            if not batch_tasks():
                break
            await asyncio.sleep(0.01)
        assert batch_tasks() == []


async def test_an_unwritable_download_dir_gives_outcomes_not_a_hang(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("I am a file")
    async with live_client(live) as client:
        async with asyncio.timeout(20):
            outcomes = [
                o
                async for o in client.generate_many(
                    range_prompts(5), concurrency=2, download_to=not_a_dir
                )
            ]
    assert len(outcomes) == 5
    for outcome in outcomes:
        assert isinstance(outcome.error, ba.DownloadError)
        assert outcome.error.reason == "io_error"
        assert outcome.task is not None
        assert outcome.task.ok
        # Which image could not be saved where, and where to fetch it again.
        assert outcome.error.url == outcome.task.image_url
        assert f"could not save the image of task {outcome.task.id} in {not_a_dir}: " in str(
            outcome.error
        )


async def test_the_batch_poll_interval_is_the_one_its_waits_keep(
    client: ba.BananaClient, server: FakeBananaServer, clock: FakeClock
) -> None:
    # The client polls every 2 s; this batch was told 5 s (virtual clock).
    server.plan(TaskScript(duration=11.0))
    outcomes = [o async for o in client.generate_many(["a cat"], poll_interval=5.0, timeout=60)]
    assert outcomes[0].ok
    assert clock.sleeps
    assert all(5.0 <= s <= 5.0 * (1 + POLL_JITTER) for s in clock.sleeps)
