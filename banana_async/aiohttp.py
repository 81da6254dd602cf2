"""aiohttp.web helpers: one :class:`~banana_async.BananaClient` per application.

:func:`setup` opens the client when the application starts (a
``cleanup_ctx``) and closes it when the application stops; :func:`get_client`
reads it in a handler::

    from aiohttp import web

    import banana_async.aiohttp as banana_web


    async def generate(request: web.Request) -> web.Response:
        task = await banana_web.get_client(request).generate("a cat")
        return web.json_response({"id": task.id, "image_url": task.image_url})


    app = web.Application()
    banana_web.setup(app, dialect="nano")
    app.router.add_post("/images", generate)

The module is named after the framework, as the helpers of other libraries
are; import it under another name (as above) so that it does not hide the
``aiohttp`` package in your own module. Inside this module ``import aiohttp``
is absolute and always means the package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from banana_async.client import BananaClient

__all__ = ["CLIENT_KEY", "get_client", "setup"]

CLIENT_KEY = web.AppKey("banana_async.client", BananaClient)
"""Where :func:`setup` keeps the client in the application (``app[CLIENT_KEY]``)."""


def setup(
    app: web.Application,
    *,
    session: web.AppKey[aiohttp.ClientSession] | None = None,
    key: web.AppKey[BananaClient] = CLIENT_KEY,
    **options: Any,
) -> None:
    """Give ``app`` a client, open from its startup to its cleanup.

    Call it while building the application. The client is opened on the
    application's event loop by a ``cleanup_ctx``, after the contexts
    appended before this call, and closed before them.

    Args:
        app: The application.
        session: The key under which the application keeps an
            :class:`aiohttp.ClientSession` of its own, to share with the client
            (one connection pool for everything the application fetches). A
            ``cleanup_ctx`` appended *before* this call must set it; the client
            borrows the session and never closes it.
        key: Where to keep the client; give each client its own key to use
            several (two dialects, say).
        **options: The :class:`~banana_async.BananaClient` arguments
            (``api_key``, ``dialect``, ``base_url``, ...); ``session`` is the
            argument above. A missing key fails the application's startup.
    """

    async def banana_client(app: web.Application) -> AsyncIterator[None]:
        shared: aiohttp.ClientSession | None = None
        if session is not None:
            shared = app.get(session)
            if shared is None:
                raise RuntimeError(
                    f"setup(session={session!r}): no session under that key when the client "
                    "opened; append the cleanup_ctx that sets it before calling setup()"
                )
        async with BananaClient(session=shared, **options) as client:
            app[key] = client
            yield

    app.cleanup_ctx.append(banana_client)


def get_client(request: web.Request, key: web.AppKey[BananaClient] = CLIENT_KEY) -> BananaClient:
    """The client :func:`setup` opened, for a request of the application.

    A sub-application's handlers find the client of the application that
    :func:`setup` was called on (the key is looked up in ``request.config_dict``).

    Raises:
        RuntimeError: If :func:`setup` was not called on the application (or on
            an application above it) with this key.
    """
    try:
        return request.config_dict[key]
    except KeyError:
        raise RuntimeError(
            "no BananaClient in this application: call banana_async.aiohttp.setup(app, ...) "
            "before the application starts"
        ) from None
