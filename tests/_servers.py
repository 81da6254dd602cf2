"""Servers the tests start for themselves: a redis-server and a Postgres cluster.

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

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REDIS_INSTALL = "redis-server not found: install it (Debian: apt-get install redis-server)"
POSTGRES_INSTALL = (
    "Postgres is not installed (initdb not found on PATH nor in /usr/lib/postgresql/*/bin); "
    "install it to run these tests: apt-get install postgresql (Debian, Ubuntu), "
    "brew install postgresql (macOS)"
)


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def missing(hint: str) -> NoReturn:
    """Skip the test for a server that is not installed; fail it under CI."""
    if "CI" in os.environ:
        pytest.fail(hint)
    pytest.skip(hint)


class RedisServer:
    """A redis-server of the test's own, on loopback, keeping nothing on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        # It says so once it listens; a server that dies ends the output instead.
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                return
        raise AssertionError(f"redis-server exited with {self.process.wait()}")

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in ``folder``, killed on exit."""
    if shutil.which("redis-server") is None:
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
