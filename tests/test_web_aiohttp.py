"""banana_async.aiohttp: the example app served by aiohttp's test server, against the fake."""

from __future__ import annotations

import ast
import asyncio
import gc
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import banana_async as ba
import banana_async.aiohttp as banana_web
from banana_async.testing import FakeBananaServer
from tests._web import creates_reach, load_example

API_KEY = "sk-test-web-aiohttp"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=API_KEY, duration=0.05) as server:
        yield server


def example_app(fake: FakeBananaServer) -> tuple[web.Application, Any]:
    """The example's app on the fake provider, and the example module."""
    example = load_example("aiohttp_app")
    app: web.Application = example.make_app(api_key=API_KEY, base_url=fake.url, poll_interval=0.02)
    return app, example


class LoopErrors:
    """Collects what reaches the loop's exception handler while in use."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def __enter__(self) -> LoopErrors:
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(lambda _, context: self.errors.append(context))
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.collect()  # an unclosed session reports itself when collected
        self._loop.set_exception_handler(self._previous)


async def settle() -> None:
    """Let the tasks cancelled by a shutdown unwind."""
    for _ in range(5):
        await asyncio.sleep(0)


def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


async def post_image(client: TestClient[Any, Any], prompt: str) -> dict[str, Any]:
    async with client.post("/images", json={"prompt": prompt}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_100_concurrent_requests_share_one_client_and_the_apps_session() -> None:
    with LoopErrors() as loop:
        async with FakeBananaServer(api_key=API_KEY, duration=0.05) as fake:
            app, example = example_app(fake)
            async with TestClient(TestServer(app, host="127.0.0.1")) as http:
                client = app[banana_web.CLIENT_KEY]
                session = app[example.HTTP]
                results = await asyncio.gather(
                    *(post_image(http, f"a cat, take {n}") for n in range(100))
                )
                async with http.get(f"/images/{results[0]['id']}.png") as response:
                    assert response.status == 200
                    assert (await response.read()).startswith(b"\x89PNG")
            await settle()
            assert other_tasks() == set()

    assert {r["status"] for r in results} == {"completed"}
    assert len({r["id"] for r in results}) == 100
    assert fake.count("create") == 100
    # The creates went out through the application's own session, which sends
    # aiohttp's User-Agent (a session of the client's own sends banana-async's).
    agents = {r.headers["User-Agent"] for r in fake.requests if r.kind == "create"}
    assert len(agents) == 1
    assert "banana-async" not in agents.pop()
    assert client.closed
    assert session.closed
    assert loop.errors == []


async def test_shutdown_with_requests_in_flight_is_clean() -> None:
    with LoopErrors() as loop:
        async with FakeBananaServer(api_key=API_KEY, duration=None) as fake:  # never finish
            app, _ = example_app(fake)
            server = TestServer(app, host="127.0.0.1")
            # Handlers still running this long after the shutdown began are cancelled.
            await server.start_server(shutdown_timeout=0.1)
            async with TestClient(server) as http:
                client = app[banana_web.CLIENT_KEY]

                async def status(prompt: str) -> int:
                    async with http.post("/images", json={"prompt": prompt}) as response:
                        return response.status

                requests = [asyncio.create_task(status(f"a kite {n}")) for n in range(20)]
                await creates_reach(fake, 20)
                await server.close()
                outcomes = await asyncio.gather(*requests, return_exceptions=True)
            await settle()
            assert other_tasks() == set()

    assert all(isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes
    assert client.closed
    assert loop.errors == []


async def test_a_sub_application_finds_the_client_of_its_parent(fake: FakeBananaServer) -> None:
    async def generate(request: web.Request) -> web.Response:
        task = await banana_web.get_client(request).generate("a fox")
        return web.json_response({"status": task.status})

    parent = web.Application()
    banana_web.setup(parent, api_key=API_KEY, base_url=fake.url, poll_interval=0.02)
    child = web.Application()
    child.router.add_get("/fox", generate)
    parent.add_subapp("/v1", child)
    async with TestClient(TestServer(parent, host="127.0.0.1")) as http:
        async with http.get("/v1/fox") as response:
            assert await response.json() == {"status": "completed"}
        # Its own session: a client that owns it.
        assert not parent[banana_web.CLIENT_KEY].closed
    assert parent[banana_web.CLIENT_KEY].closed


async def test_two_clients_under_two_keys(fake: FakeBananaServer) -> None:
    navo_key = web.AppKey("navo", ba.BananaClient)

    async def both(request: web.Request) -> web.Response:
        nano = banana_web.get_client(request)
        navo = banana_web.get_client(request, navo_key)
        tasks = await asyncio.gather(nano.generate("a cat"), navo.generate("a dog"))
        return web.json_response([task.status for task in tasks])

    app = web.Application()
    options: dict[str, Any] = {"api_key": API_KEY, "base_url": fake.url, "poll_interval": 0.02}
    banana_web.setup(app, **options)
    banana_web.setup(app, key=navo_key, dialect="navo", **options)
    app.router.add_get("/", both)
    async with TestClient(TestServer(app, host="127.0.0.1")) as http, http.get("/") as response:
        assert await response.json() == ["completed", "completed"]
    assert sorted(r.dialect or "" for r in fake.requests if r.kind == "create") == ["nano", "navo"]


async def test_get_client_without_setup_says_what_to_do() -> None:
    async def handler(request: web.Request) -> web.Response:
        banana_web.get_client(request)
        return web.Response()

    errors: list[BaseException] = []

    @web.middleware
    async def keep(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except RuntimeError as exc:
            errors.append(exc)
            raise web.HTTPInternalServerError() from exc
        return response

    app = web.Application(middlewares=[keep])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as http, http.get("/") as response:
        assert response.status == 500
    assert "banana_async.aiohttp.setup(app" in str(errors[0])


async def test_a_session_key_nobody_set_fails_the_startup(fake: FakeBananaServer) -> None:
    missing = web.AppKey("missing", aiohttp.ClientSession)
    app = web.Application()
    banana_web.setup(app, session=missing, api_key=API_KEY, base_url=fake.url)
    server = TestServer(app, host="127.0.0.1")
    with pytest.raises(RuntimeError, match="append the cleanup_ctx that sets it before"):
        await server.start_server()
    await server.close()
    assert banana_web.CLIENT_KEY not in app


def test_the_helper_module_does_not_hide_the_aiohttp_package() -> None:
    # Its absolute imports name the package, never the module itself.
    assert vars(banana_web)["aiohttp"] is aiohttp
    assert vars(banana_web)["web"] is web
    assert ba.aiohttp is banana_web  # a submodule, not in __all__
    assert "aiohttp" not in ba.__all__
    # Importing a submodule sets the package's attribute of that name, which is
    # a global of banana_async/__init__.py: a name aiohttp (or fastapi) bound
    # there would turn into the helper module once the helper is imported.
    tree = ast.parse(Path(ba.__file__).read_text(encoding="utf-8"))
    bound = {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not bound & {"aiohttp", "fastapi"}


async def test_the_fake_provider_runs_from_the_command_line() -> None:
    # What the examples' instructions start: python -m banana_async.testing.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async.testing",
        "--port",
        "0",
        "--duration",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await process.stdout.readline()).decode()
    url = line.split()[line.split().index("on") + 1]
    try:
        async with ba.BananaClient("any-key", base_url=url, poll_interval=0.02) as client:
            task = await client.generate("a cat")
        assert task.ok
        assert task.image_url is not None
        assert task.image_url.startswith(url)
    finally:
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def test_the_fake_provider_on_a_taken_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "banana_async.testing",
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()
    assert "Traceback" not in err.decode()
