"""An aiohttp.web service that generates an image and answers with its URL.

The application keeps one :class:`aiohttp.ClientSession` for everything it
fetches, and the client borrows it: ``GET /images/{id}.png`` passes an image
on through the same connection pool. Try it against the fake provider, with
no key and no network::

    python -m banana_async.testing --port 8500 &
    BANANA_BASE_URL=http://127.0.0.1:8500 BANANA_API_KEY=sk-fake-123 python examples/aiohttp_app.py
    curl -X POST localhost:8080/images -d '{"prompt": "a cat on a windowsill"}'

Against the real service, set ``BANANA_API_KEY`` only (and ``BANANA_DIALECT=navo``
for that reseller).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

import banana_async as ba
import banana_async.aiohttp as banana_web

HTTP = web.AppKey("http", aiohttp.ClientSession)


async def http_session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[HTTP] = session
        yield


async def generate_image(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        prompt, size = body["prompt"], body.get("size")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise web.HTTPBadRequest(text='expected a JSON object {"prompt": ...}') from exc
    client = banana_web.get_client(request)
    try:
        task = await client.generate(prompt, size=size, timeout=120)
    except ba.InvalidRequestError as exc:
        raise web.HTTPUnprocessableEntity(text=str(exc)) from exc
    except ba.TaskFailedError as exc:
        task = exc.task
    except ba.TaskTimeoutError as exc:
        raise web.HTTPGatewayTimeout(text=f"task {exc.task_id} is still running") from exc
    except ba.BananaError as exc:
        raise web.HTTPBadGateway(text=str(exc)) from exc
    return web.json_response(
        {"id": task.id, "status": task.status, "image_url": task.image_url, "error": task.error}
    )


async def image_png(request: web.Request) -> web.Response:
    """Fetch a finished task's image through the shared session and pass it on."""
    try:
        task = await banana_web.get_client(request).get(request.match_info["task_id"])
    except ba.NotFoundError as exc:
        raise web.HTTPNotFound() from exc
    except ba.BananaError as exc:
        raise web.HTTPBadGateway(text=str(exc)) from exc
    if not task.ok or task.image_url is None:
        raise web.HTTPConflict(text=f"task {task.id} is {task.status}")
    async with request.app[HTTP].get(task.image_url, raise_for_status=True) as response:
        return web.Response(body=await response.read(), content_type="image/png")


def make_app(**client_options: Any) -> web.Application:
    """The application; ``client_options`` go to the BananaClient (tests pass their own)."""
    options: dict[str, Any] = {
        "dialect": os.environ.get("BANANA_DIALECT", "nano"),
        # None (unset) means the dialect's own API hosts.
        "base_url": os.environ.get("BANANA_BASE_URL"),
        **client_options,
    }
    app = web.Application()
    # The session's context first: the client opens after it and closes before it.
    app.cleanup_ctx.append(http_session)
    banana_web.setup(app, session=HTTP, **options)
    app.router.add_post("/images", generate_image)
    app.router.add_get("/images/{task_id}.png", image_png)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
