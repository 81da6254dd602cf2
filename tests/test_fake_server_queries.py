"""``TaskScript.queries``: a fake task that completes at its Nth status query."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, Fault, TaskScript

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY: dict[str, Any] = {"model": "nano-banana-2", "prompt": "a cat"}


class Clock:
    """A server clock that only moves when told: progress must come from queries."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=KEY, duration=0.0, clock=Clock()) as srv:
        yield srv


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as sess:
        yield sess


async def create(session: aiohttp.ClientSession, server: FakeBananaServer) -> str:
    async with session.post(f"{server.url}/v1/banana/images", json=BODY) as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return str(data["id"])


async def status(session: aiohttp.ClientSession, server: FakeBananaServer, task_id: str) -> str:
    async with session.get(f"{server.url}/v1/result/{task_id}") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return str(data["status"])


async def test_completes_at_the_nth_query_whatever_the_duration(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    # duration=0.0 would make it done at once: queries takes its place.
    server.plan(TaskScript(duration=0.0, queries=3))
    task_id = await create(session, server)
    assert server.tasks[task_id].finished_at is None
    seen = [await status(session, server, task_id) for _ in range(5)]
    assert seen == ["processing", "processing", "completed", "completed", "completed"]
    assert server.tasks[task_id].queries == 5


async def test_counted_per_task(server: FakeBananaServer, session: aiohttp.ClientSession) -> None:
    server.script_for = lambda body: TaskScript(queries=2)
    first = await create(session, server)
    second = await create(session, server)
    assert await status(session, server, first) == "processing"
    assert await status(session, server, second) == "processing"
    assert await status(session, server, first) == "completed"
    assert await status(session, server, second) == "completed"


async def test_failure_and_status_words(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.plan(TaskScript(queries=1, outcome="fail", status_words={"failed": "FAILURE"}))
    task_id = await create(session, server)
    assert await status(session, server, task_id) == "FAILURE"


async def test_manual_finish_still_ends_it_earlier(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.plan(TaskScript(queries=10))
    task_id = await create(session, server)
    assert await status(session, server, task_id) == "processing"
    server.finish(task_id)
    assert await status(session, server, task_id) == "completed"


async def test_faulted_queries_do_not_count(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.plan(TaskScript(queries=1))
    task_id = await create(session, server)
    server.inject(Fault.status(503), on="query")
    async with session.get(f"{server.url}/v1/result/{task_id}") as resp:
        assert resp.status == 503
    assert server.tasks[task_id].queries == 0
    assert await status(session, server, task_id) == "completed"


async def test_a_client_polls_exactly_that_often(server: FakeBananaServer) -> None:
    server.plan(TaskScript(queries=2))
    async with ba.BananaClient(KEY, base_url=server.url, poll_interval=0.001) as client:
        task = await client.generate("a cat")
    assert task.status is ba.TaskStatus.COMPLETED
    assert server.count("query") == 2


def test_defaults_and_validation() -> None:
    assert TaskScript().queries is None
    assert TaskScript(queries=1).queries == 1
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="queries"):
            TaskScript(queries=bad)  # type: ignore[arg-type]
