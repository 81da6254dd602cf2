"""A Postgres cluster of the tests' own: ``initdb`` into a temporary folder, ``pg_ctl`` on loopback.

No system service, no Docker. Locally, a machine without Postgres skips the
test that asks for one, with a hint; under CI (``$CI`` set) that is an error.

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
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

# One way to find a free port for both servers (the Redis half is plain Python).
from ._redis_server import free_port

__all__ = ["INSTALL_HINT", "Cluster", "bin_dir", "cluster", "missing"]

INSTALL_HINT = (
    "Postgres is not installed (initdb not found on PATH nor in /usr/lib/postgresql/*/bin); "
    "install it to run these tests: apt-get install postgresql (Debian, Ubuntu), "
    "brew install postgresql (macOS)"
)


def missing(hint: str) -> NoReturn:
    """Skip the test for a server that is not installed; fail it under CI."""
    if "CI" in os.environ:
        pytest.fail(hint)
    pytest.skip(hint)


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or None."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    # Debian's package keeps the binaries off PATH.
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    return None


class Cluster:
    """A Postgres cluster of the tests' own, which a test may stop and start again."""

    def __init__(self, bin_dir: Path, data: Path, prefix: list[str]) -> None:
        self._bin_dir = bin_dir
        self._data = data
        self._prefix = prefix
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *arguments: str) -> None:
        """Run one of the Postgres programs on this cluster's data folder."""
        command = [str(self._bin_dir / program), "-D", str(self._data / "cluster"), *arguments]
        subprocess.run([*self._prefix, *command], check=True, capture_output=True, cwd=self._data)

    def create(self, password: str | None = None) -> None:
        """Make the cluster (user postgres; trust auth, or this password)."""
        if password is None:
            auth = ["--auth", "trust"]
        else:
            secret = self._data / "password"
            secret.write_text(password, encoding="utf-8")
            auth = ["--auth", "scram-sha-256", "--pwfile", str(secret)]
        self._run("initdb", "-U", "postgres", *auth)

    def start(self) -> None:
        """Start it (again, on the same port) and return once it takes connections."""
        options = f"-p {self.port} -k {self._data} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-l", str(self._data / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Stop it (fast: open connections are cut) and return once it is down."""
        self._run("pg_ctl", "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def cluster(password: str | None = None) -> Iterator[Cluster]:
    """A new, started cluster (user postgres; trust auth, or this password), stopped at the end."""
    binaries = bin_dir()
    if binaries is None:
        missing(INSTALL_HINT)
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
    made = Cluster(binaries, data, prefix)
    try:
        made.create(password)
        made.start()
        try:
            yield made
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):  # stopped by the test
                made.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
