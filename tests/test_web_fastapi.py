"""banana_async.fastapi: the example app served by uvicorn on loopback, against the fake.

uvicorn runs in a thread with an event loop of its own, as in production: the
client is opened there by the lifespan, while the fake provider and the test's
HTTP requests run on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, MutableMapping
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI, Request, WebSocket

import banana_async as ba
from banana_async.fastapi import STATE_NAME, BananaClientDep, client_of, lifespan
from banana_async.testing import FakeBananaServer
from tests._web import Uvicorn, creates_reach, load_example

API_KEY = "sk-test-web-fastapi"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=API_KEY, duration=0.05) as server:
        yield server


def example_app(fake: FakeBananaServer) -> FastAPI:
    """The example's app on the fake provider, plus a route naming the client it gets."""
    app: FastAPI = load_example("fastapi_app").make_app(
        api_key=API_KEY, base_url=fake.url, poll_interval=0.02
    )

    @app.get("/client")
    async def which_client(client: BananaClientDep) -> int:
        return id(client)

    return app


async def post_image(session: aiohttp.ClientSession, url: str, prompt: str) -> dict[str, Any]:
    async with session.post(f"{url}/images", json={"prompt": prompt}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_100_concurrent_requests_share_one_client(fake: FakeBananaServer) -> None:
    app = example_app(fake)
    async with Uvicorn(app) as server, aiohttp.ClientSession() as session:
        client = client_of(app)
        results = await asyncio.gather(
            *(post_image(session, server.url, f"a cat, take {n}") for n in range(100))
        )
        clients = await asyncio.gather(*(session.get(f"{server.url}/client") for _ in range(100)))
        ids = {await response.json() for response in clients}
        for response in clients:
            response.release()

    assert ids == {id(client)}
    assert {r["status"] for r in results} == {"completed"}
    assert len({r["id"] for r in results}) == 100
    assert all(r["image_url"].startswith(fake.url) for r in results)
    assert fake.count("create") == 100
    assert sorted(r.json["prompt"] for r in fake.requests if r.kind == "create") == sorted(
        f"a cat, take {n}" for n in range(100)
    )
    assert client.closed
    assert not hasattr(app.state, STATE_NAME)
    server.assert_clean()


async def test_a_status_route_and_errors_come_through(fake: FakeBananaServer) -> None:
    app = example_app(fake)
    async with Uvicorn(app) as server, aiohttp.ClientSession() as session:
        made = await post_image(session, server.url, "a lighthouse")
        async with session.get(f"{server.url}/images/{made['id']}") as response:
            assert await response.json() == made
        async with session.get(f"{server.url}/images/no-such-task") as response:
            assert response.status == 404
        async with session.post(f"{server.url}/images", json={"prompt": "  "}) as response:
            assert response.status == 422
            assert "prompt" in (await response.json())["detail"]
    server.assert_clean()


async def test_shutdown_waits_for_requests_in_flight(fake: FakeBananaServer) -> None:
    fake.duration = None  # the tasks finish when the test says so
    app = example_app(fake)
    async with Uvicorn(app) as server, aiohttp.ClientSession() as session:
        requests = [
            asyncio.create_task(post_image(session, server.url, f"a boat {n}")) for n in range(20)
        ]
        await creates_reach(fake, 20)
        assert server.server.servers
        server.server.should_exit = True  # as SIGTERM does; the requests are still polling
        stopping = asyncio.create_task(server.stop())
        # uvicorn stops listening first, then waits for the requests in flight.
        while any(listener.is_serving() for listener in server.server.servers):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for task_id in list(fake.tasks):
            fake.finish(task_id)
        results = await asyncio.gather(*requests)
        await stopping

    assert {r["status"] for r in results} == {"completed"}
    server.assert_clean()


async def test_shutdown_past_the_grace_period_cancels_requests_cleanly(
    fake: FakeBananaServer,
) -> None:
    fake.duration = None  # the tasks never finish
    app = example_app(fake)
    async with (
        Uvicorn(app, timeout_graceful_shutdown=0.1) as server,
        aiohttp.ClientSession() as session,
    ):
        client = client_of(app)

        async def status(prompt: str) -> int:
            async with session.post(f"{server.url}/images", json={"prompt": prompt}) as response:
                return response.status

        requests = [asyncio.create_task(status(f"a kite {n}")) for n in range(20)]
        await creates_reach(fake, 20)
        await server.stop()
        outcomes = await asyncio.gather(*requests, return_exceptions=True)

    # uvicorn cancelled the requests: a 500 for each, or a connection cut short.
    assert all(o == 500 or isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes
    assert client.closed
    server.assert_clean()


async def test_lifespan_wraps_the_apps_own_lifespan(fake: FakeBananaServer) -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        client = client_of(app)  # already open when the app's own lifespan starts
        seen.append(f"start {client.closed}")
        yield {"greeting": "hello"}
        seen.append(f"stop {client.closed}")

    app = FastAPI(lifespan=lifespan(own, api_key=API_KEY, base_url=fake.url, poll_interval=0.02))

    @app.get("/")
    async def route(client: BananaClientDep) -> dict[str, str]:
        task = await client.generate("a fox")
        return {"status": task.status}

    @app.get("/greeting")
    async def greeting(request: Request) -> str:
        return str(request.state.greeting)

    async with Uvicorn(app) as server, aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/") as response:
            assert await response.json() == {"status": "completed"}
        async with session.get(f"{server.url}/greeting") as response:
            assert await response.json() == "hello"

    assert seen == ["start False", "stop False"]
    server.assert_clean()


def test_get_client_without_the_lifespan_says_what_to_do() -> None:
    app = FastAPI()
    with pytest.raises(RuntimeError, match=r"lifespan=banana_async\.fastapi\.lifespan"):
        client_of(app)


def test_importing_banana_async_imports_no_web_framework() -> None:
    code = (
        "import sys, banana_async, banana_async.testing; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'banana_async.fastapi', "
        "'banana_async.aiohttp') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_without_fastapi_the_module_says_how_to_install_it() -> None:
    # None in sys.modules makes an import fail as if the package were absent.
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "try:\n    import banana_async.fastapi\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'banana-async[fastapi]'" in done.stdout


def test_a_missing_key_fails_the_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ba.API_KEY_ENV, raising=False)
    app = FastAPI(lifespan=lifespan(base_url="http://127.0.0.1:1"))
    server = Uvicorn(app)

    async def start() -> None:
        async with server:
            pass

    with pytest.raises(RuntimeError, match="did not start"):
        asyncio.run(start())
    # uvicorn ends the process when the application cannot start.
    assert isinstance(server.error, SystemExit)
    assert server.loop_errors == []


async def test_the_lifespan_raises_the_clients_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ba.API_KEY_ENV, raising=False)
    app = FastAPI()
    with pytest.raises(ba.InvalidRequestError, match="no API key"):
        async with lifespan()(app):
            pass
    assert not hasattr(app.state, STATE_NAME)


async def test_a_websocket_endpoint_gets_the_client_too(fake: FakeBananaServer) -> None:
    # uvicorn needs a websocket package to serve one: the app is driven over ASGI here.
    app = FastAPI()

    @app.websocket("/ws")
    async def socket(websocket: WebSocket, client: BananaClientDep) -> None:
        await websocket.accept()
        task = await client.generate(await websocket.receive_text())
        await websocket.send_text(task.status)
        await websocket.close()

    incoming: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    for message in (
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "a heron"},
        {"type": "websocket.disconnect", "code": 1000},
    ):
        incoming.put_nowait(message)
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    async with lifespan(api_key=API_KEY, base_url=fake.url, poll_interval=0.02)(app):
        await app(scope, incoming.get, send)

    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "completed"
