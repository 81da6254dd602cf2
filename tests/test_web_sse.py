"""The server-sent events example (examples/fastapi_sse.py) under uvicorn, against the fake."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI

from banana_async.fastapi import client_of
from banana_async.testing import FakeBananaServer, TaskScript
from tests._web import EXAMPLES, Uvicorn, creates_reach, load_example

API_KEY = "sk-test-web-sse"

Event = tuple[int, str, dict[str, Any]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=API_KEY, duration=None) as server:
        yield server


def sse_app(fake: FakeBananaServer) -> FastAPI:
    app: FastAPI = load_example("fastapi_sse").make_app(
        api_key=API_KEY, base_url=fake.url, poll_interval=0.02
    )
    return app


async def start_batch(session: aiohttp.ClientSession, url: str, prompts: list[str]) -> str:
    async with session.post(f"{url}/batches", json={"prompts": prompts}) as response:
        assert response.status == 200, await response.text()
        events: str = (await response.json())["events"]
        return events


async def read_events(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str] | None = None,
    opened: asyncio.Event | None = None,
) -> list[Event]:
    """Every event of the stream, until the server ends it; ``opened`` is set once it answers."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    async with session.get(url, headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        if opened is not None:
            opened.set()
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
    return events


async def test_a_batch_streams_each_change_then_its_outcome(fake: FakeBananaServer) -> None:
    # Each task answers "processing" at its first query and "completed" at its second.
    fake.plan(*[TaskScript(queries=2)] * 3)
    prompts = ["a cat", "a dog", "  ", "a fox"]
    async with Uvicorn(sse_app(fake)) as server, aiohttp.ClientSession() as session:
        path = await start_batch(session, server.url, prompts)
        events = await read_events(session, server.url + path)
        # A reconnecting browser sends the last id it saw and gets the rest.
        rest = await read_events(
            session, server.url + path, headers={"Last-Event-ID": str(events[3][0])}
        )

    assert [position for position, _, _ in events] == list(range(len(events)))
    assert rest == events[4:]
    assert events[-1][1:] == ("done", {})
    for index in (0, 1, 3):
        changes = [d for _, name, d in events if name == "status" and d["index"] == index]
        last_change = max(p for p, name, d in events if name == "status" and d["index"] == index)
        assert [(d["previous"], d["status"]) for d in changes] == [
            (None, "queued"),
            ("queued", "processing"),
            ("processing", "completed"),
        ]
        assert len({d["task_id"] for d in changes}) == 1
        ((at, outcome),) = [
            (p, d) for p, name, d in events if name == "outcome" and d["index"] == index
        ]
        assert at > last_change
        assert outcome["status"] == "completed"
        assert outcome["image_url"] == fake.image_url(changes[0]["task_id"])
    (blank,) = [d for _, name, d in events if name == "outcome" and d["index"] == 2]
    assert blank["status"] == "failed"
    assert "prompt" in blank["error"]
    assert fake.count("create") == 3
    server.assert_clean()


async def test_a_stream_of_an_unknown_batch_is_404(fake: FakeBananaServer) -> None:
    async with (
        Uvicorn(sse_app(fake)) as server,
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/batches/nope/events") as response,
    ):
        assert response.status == 404
    server.assert_clean()


async def test_shutdown_cancels_running_batches_and_ends_their_streams(
    fake: FakeBananaServer,
) -> None:
    app = sse_app(fake)  # the fake's tasks never finish
    async with (
        Uvicorn(app, timeout_graceful_shutdown=0.1) as server,
        aiohttp.ClientSession() as session,
    ):
        client = client_of(app)
        followed = await start_batch(session, server.url, ["a kite", "a boat"])
        await start_batch(session, server.url, ["nobody follows this one"])
        stream = asyncio.create_task(read_events(session, server.url + followed))
        await creates_reach(fake, 3)
        await server.stop()
        ended = await asyncio.gather(stream, return_exceptions=True)

    # The stream either saw the batch end or was cut by the shutdown.
    (result,) = ended
    assert isinstance(result, (list, aiohttp.ClientError)), result
    if isinstance(result, list):
        assert result[-1][1] == "done"
    assert client.closed
    server.assert_clean()


@pytest.mark.parametrize("last_event_id", ["-100", "-1", "abc", "1.5", "\u0663"])
async def test_a_last_event_id_that_is_no_event_id_is_refused(
    fake: FakeBananaServer, last_event_id: str
) -> None:
    # A negative id used to replay events counted from the end, with negative ids.
    fake.plan(TaskScript(queries=1))
    async with Uvicorn(sse_app(fake)) as server, aiohttp.ClientSession() as session:
        path = await start_batch(session, server.url, ["a cat"])
        events = await read_events(session, server.url + path)  # the batch is over
        async with session.get(
            server.url + path, headers={"Last-Event-ID": last_event_id}
        ) as response:
            assert response.status == 400
            assert "Last-Event-ID" in (await response.json())["detail"]
        # The last event's id asks for nothing more.
        assert await read_events(session, server.url + path, {"Last-Event-ID": "0"}) == events[1:]
    server.assert_clean()


async def test_shutdown_ends_open_streams_at_once_and_cancels_their_batch(
    fake: FakeBananaServer,
) -> None:
    # The example's own server, with no grace period: the stream must end by
    # itself, or the server would wait for the batch, whose tasks never finish,
    # and the lifespan that cancels it would never run.
    example = load_example("fastapi_sse")
    app = example.make_app(api_key=API_KEY, base_url=fake.url, poll_interval=0.02)
    async with (
        Uvicorn(app, server_class=example.Server) as server,
        aiohttp.ClientSession() as session,
    ):
        client = client_of(app)
        path = await start_batch(session, server.url, ["a kite", "a boat"])
        await creates_reach(fake, 2)
        opened = asyncio.Event()
        stream = asyncio.create_task(read_events(session, server.url + path, opened=opened))
        await opened.wait()
        await server.stop()
        events = await stream

    assert events
    assert all(name == "status" for _, name, _ in events)  # no outcome: nothing finished
    (batch,) = app.state.batches.batches.values()
    assert batch.done  # cancelled by the lifespan: its "done" came after the stream ended
    assert batch.events[-1] == ("done", {})
    assert client.closed
    server.assert_clean()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
async def test_ctrl_c_with_a_stream_open_stops_the_example_at_once(fake: FakeBananaServer) -> None:
    # `python examples/fastapi_sse.py`, as the docs run it, and one Ctrl-C.
    env = {**os.environ, "BANANA_BASE_URL": fake.url, "BANANA_API_KEY": API_KEY, "PORT": "0"}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "fastapi_sse.py"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stderr is not None
    log: list[str] = []
    while not (running := re.search(r"running on (http://\S+)", log[-1] if log else "")):
        line = await child.stderr.readline()
        assert line, "".join(log)
        log.append(line.decode())
    url = running.group(1)
    async with aiohttp.ClientSession() as session:
        path = await start_batch(session, url, ["a kite", "a boat"])  # never finishes
        opened = asyncio.Event()
        stream = asyncio.create_task(read_events(session, url + path, opened=opened))
        await opened.wait()
        child.send_signal(signal.SIGINT)
        events = await stream
        rest = (await child.stderr.read()).decode()
    assert await child.wait() == 0, rest
    assert events
    assert "Waiting for connections to close" not in rest
    assert "Traceback" not in rest
    assert "Application shutdown complete" in rest
