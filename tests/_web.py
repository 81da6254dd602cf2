"""Shared by the web helper tests: load an example app, serve it with uvicorn, wait."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import socket
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import uvicorn
from fastapi import FastAPI

from banana_async.testing import FakeBananaServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` afresh, as ``python examples/<name>.py`` would find it."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def creates_reach(server: FakeBananaServer, count: int) -> None:
    """Return once ``server`` has received ``count`` creates (the requests are in flight)."""
    while server.count("create") < count:  # noqa: ASYNC110 - the server has no event
        await asyncio.sleep(0.01)


class Uvicorn:
    """uvicorn serving ``app`` on a free loopback port, in a thread with its own loop.

    ``server_class`` is :class:`uvicorn.Server` or an example's subclass of it.

    After :meth:`stop`, ``loop_errors`` holds what reached the loop's exception
    handler (an unclosed session, a task destroyed while pending, an exception
    never retrieved) and ``leftover_tasks`` the tasks still alive once the
    server returned.
    """

    def __init__(
        self, app: FastAPI, server_class: type[uvicorn.Server] = uvicorn.Server, **config: Any
    ) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = {"lifespan": "on", "log_level": "critical", **config}
        self.server = server_class(uvicorn.Config(app, **config))
        self.loop_errors: list[dict[str, Any]] = []
        self.leftover_tasks: list[asyncio.Task[Any]] = []
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the test thread reads it
            self.error = exc

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: self.loop_errors.append(context))
        try:
            serving = asyncio.create_task(self.server.serve(sockets=[self._socket]))
            while not self.server.started and not serving.done():  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.01)
            self._ready.set()
            await serving
            # Cancelled request tasks unwind in the loop's next turns.
            for _ in range(5):
                await asyncio.sleep(0)
            gc.collect()  # an unclosed session reports itself when collected
            current = asyncio.current_task()
            self.leftover_tasks = [t for t in asyncio.all_tasks() if t is not current]
        finally:
            self._ready.set()
            self._socket.close()

    async def __aenter__(self) -> Uvicorn:
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if not self.server.started:
            await self.stop()
            raise RuntimeError(f"uvicorn did not start: {self.error!r}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Ask the server to shut down (as SIGTERM would) and wait until it has."""
        self.server.should_exit = True
        await asyncio.to_thread(self._thread.join)

    def assert_clean(self) -> None:
        assert self.loop_errors == []
        assert self.leftover_tasks == []
