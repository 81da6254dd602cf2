"""Servers the tests start for themselves (a redis-server, a Postgres cluster), and stop.

Each runs on a free loopback port out of a temporary folder and is stopped
afterwards; no system service, no Docker. :func:`redis_server` and
:func:`postgres_cluster` skip the calling test, with a hint on how to
install what is missing, when the server is not installed; under CI
(``$CI`` set) that is an error instead.

The Postgres cluster is :class:`tests._postgres.Cluster` (which also says
how it runs as ``nobody`` when the tests run as root); the redis-server is
:class:`tests._redis_server.RedisServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ._postgres import INSTALL_HINT as POSTGRES_INSTALL
from ._postgres import bin_dir as postgres_bin_dir
from ._postgres import cluster
from ._postgres import missing as missing

# The plain-Python half (no pytest), which the benchmark uses as well.
from ._redis_server import INSTALL as REDIS_INSTALL
from ._redis_server import RedisServer as RedisServer
from ._redis_server import free_port as free_port

__all__ = [
    "POSTGRES_INSTALL",
    "REDIS_INSTALL",
    "RedisServer",
    "free_port",
    "killed_at_exit",
    "missing",
    "postgres_bin_dir",
    "postgres_cluster",
    "redis_server",
]


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in ``folder``, killed on exit."""
    if not RedisServer.available():
        missing(REDIS_INSTALL)
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A Postgres cluster of the caller's own: its URL (user postgres, trust auth)."""
    with cluster() as made:
        yield made.url


@contextlib.asynccontextmanager
async def killed_at_exit(*workers: asyncio.subprocess.Process) -> AsyncIterator[None]:
    """Kill the workers still running when the block is left (a failed assertion)."""
    try:
        yield
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.communicate()
