"""Servers the tests start for themselves (a redis-server, a Postgres cluster), and stop.

Each runs on a free loopback port out of a temporary folder and is stopped
afterwards; no system service, no Docker. :func:`redis_server` and
:func:`postgres_cluster` skip the calling test, with a hint on how to
install what is missing, when the server is not installed; under CI
(``$CI`` set) that is an error instead.

``initdb`` refuses to run as root, and CI (``.ci/run``) runs as root: then
the cluster is made and run as the user ``nobody`` through ``setpriv``
(util-linux, on every Debian), in a folder of its own under the system's
temporary folder (which ``nobody`` can reach; pytest's own folders are
private to root).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

# The plain-Python half (no pytest), which the benchmark uses as well.
from ._redis_server import INSTALL as REDIS_INSTALL
from ._redis_server import RedisServer as RedisServer
from ._redis_server import free_port as free_port

POSTGRES_INSTALL = (
    "Postgres is not installed (initdb not found on PATH nor in /usr/lib/postgresql/*/bin); "
    "install it to run these tests: apt-get install postgresql (Debian, Ubuntu), "
    "brew install postgresql (macOS)"
)


def missing(hint: str) -> NoReturn:
    """Skip the test for a server that is not installed; fail it under CI."""
    if "CI" in os.environ:
        pytest.fail(hint)
    pytest.skip(hint)


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


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or None."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    # Debian's package keeps the binaries off PATH.
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    return None


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A Postgres cluster of the caller's own: its URL (user postgres, trust auth)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        missing(POSTGRES_INSTALL)
    data = Path(tempfile.mkdtemp(prefix="banana-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
        prefix = [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "--",
        ]
    cluster = data / "cluster"
    port = free_port()

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, cwd=data)

    try:
        run(str(bin_dir / "initdb"), "-D", str(cluster), "-U", "postgres", "--auth", "trust")
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(cluster),
            "-l",
            str(data / "log"),
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(cluster), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(data, ignore_errors=True)


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
