"""FastAPI helpers: one :class:`~banana_async.BananaClient` per application.

Install them with ``pip install 'banana-async[fastapi]'``; ``import
banana_async`` never imports this module, so FastAPI stays optional.

:func:`lifespan` opens the client when the application starts and closes it
when the application stops; :data:`BananaClientDep` (or :func:`get_client`
with ``Depends``) hands it to an endpoint::

    from fastapi import FastAPI

    from banana_async.fastapi import BananaClientDep, lifespan

    app = FastAPI(lifespan=lifespan(dialect="nano"))


    @app.post("/images")
    async def generate(prompt: str, client: BananaClientDep) -> dict[str, str | None]:
        task = await client.generate(prompt)
        return {"id": task.id, "image_url": task.image_url}

To keep a lifespan of your own, pass it in: ``lifespan(my_lifespan,
dialect="nano")``. The client is open before ``my_lifespan`` starts (it can
read it with :func:`client_of`) and closes after it ends; whatever state
``my_lifespan`` yields is passed on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, TypeVar, overload

try:
    from fastapi import Depends
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "banana_async.fastapi needs FastAPI: pip install 'banana-async[fastapi]'"
    ) from exc

from banana_async.client import BananaClient

__all__ = ["STATE_NAME", "BananaClientDep", "client_of", "get_client", "lifespan"]

STATE_NAME = "banana_client"
"""The attribute of ``app.state`` that holds the client while the application runs."""

_App = TypeVar("_App", bound=Starlette)


@overload
def lifespan(
    app_lifespan: None = None, /, **options: Any
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]: ...


@overload
def lifespan(
    app_lifespan: Callable[[_App], AbstractAsyncContextManager[None]], /, **options: Any
) -> Callable[[_App], AbstractAsyncContextManager[None]]: ...


@overload
def lifespan(
    app_lifespan: Callable[[_App], AbstractAsyncContextManager[Mapping[str, Any]]],
    /,
    **options: Any,
) -> Callable[[_App], AbstractAsyncContextManager[Mapping[str, Any]]]: ...


def lifespan(
    app_lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    /,
    **options: Any,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """A FastAPI (or Starlette) lifespan that opens a client for the application.

    Each start of the application opens a new :class:`~banana_async.BananaClient`
    on the server's event loop and keeps it on ``app.state`` (as
    :data:`STATE_NAME`) until the application stops, so every request of one
    worker process shares one client, with one connection pool and one rate
    limit. A worker process of its own (``uvicorn --workers``) opens its own.

    Args:
        app_lifespan: The application's own lifespan, run inside this one: the
            client is open for all of it. Whatever it yields (``None`` or a
            state mapping) is yielded on.
        **options: The :class:`~banana_async.BananaClient` arguments
            (``api_key``, ``dialect``, ``base_url``, ``session``, ...). The key
            defaults to ``$BANANA_API_KEY`` as usual; a missing key fails the
            application's startup, not its first request.

    Returns:
        The lifespan to pass as ``FastAPI(lifespan=...)``.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        async with BananaClient(**options) as client:
            setattr(app.state, STATE_NAME, client)
            try:
                if app_lifespan is None:
                    yield None
                else:
                    async with app_lifespan(app) as state:
                        yield state
            finally:
                # A closed client left behind would only fail later, less clearly.
                delattr(app.state, STATE_NAME)

    return run


def client_of(app: Starlette) -> BananaClient:
    """The client that :func:`lifespan` opened for ``app``.

    Raises:
        RuntimeError: If the application is not running under :func:`lifespan`
            (it was not passed to ``FastAPI(lifespan=...)``, or a test client
            was used without ``with``).
    """
    client = getattr(app.state, STATE_NAME, None)
    if not isinstance(client, BananaClient):
        raise RuntimeError(
            "no BananaClient on app.state: create the application with "
            "FastAPI(lifespan=banana_async.fastapi.lifespan(...)) and let it start"
        )
    return client


def get_client(connection: HTTPConnection) -> BananaClient:
    """A FastAPI dependency: the application's client, for an HTTP or WebSocket endpoint.

    Use it as ``client: BananaClient = Depends(get_client)``, or annotate the
    parameter with :data:`BananaClientDep`.
    """
    return client_of(connection.app)


BananaClientDep = Annotated[BananaClient, Depends(get_client)]
"""An endpoint parameter annotated with this receives the application's client."""
