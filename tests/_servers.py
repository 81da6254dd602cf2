"""Servers and worker processes the tests start themselves, and stop.

A Postgres cluster of the test session (``initdb`` into a temporary folder,
``pg_ctl`` on a free loopback port; no system service, no Docker), and a
guard that kills worker subprocesses a failed test leaves running.

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
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

POSTGRES_INSTALL_HINT = (
    "Postgres is not installed (initdb not found on PATH nor in /usr/lib/postgresql/*/bin); "
    "install it to run these tests: apt-get install postgresql (Debian, Ubuntu), "
    "brew install postgresql (macOS)"
)


def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, or None when Postgres is not installed."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    # Debian's package keeps the binaries off PATH.
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    return None


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """Run a new Postgres cluster for the ``with`` block: its URL (user postgres, trust auth).

    Locally, a machine without Postgres skips the test with a hint; under CI
    (``$CI`` set) that is an error.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        if "CI" in os.environ:
            pytest.fail(POSTGRES_INSTALL_HINT)
        pytest.skip(POSTGRES_INSTALL_HINT)
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
