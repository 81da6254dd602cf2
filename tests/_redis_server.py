"""A redis-server of one's own on loopback, for the shared-budget tests and the benchmark.

Plain Python (no pytest), so that ``benchmarks/bench.py`` starts Redis the
way the tests do: ``tests/test_ratelimit_redis.py`` wraps it in a fixture.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

INSTALL = "redis-server not found: install it (Debian: apt-get install redis-server)"
"""What to say when ``redis-server`` is not on PATH."""


def free_port() -> int:
    """A loopback TCP port that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server on a free loopback port, keeping nothing on disk.

    Args:
        folder: Its working folder (a temporary one; it writes nothing there).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @staticmethod
    def available() -> bool:
        """Whether ``redis-server`` is on PATH."""
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        """Its URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port) and return once it listens."""
        binary = shutil.which("redis-server")
        assert binary is not None, INSTALL
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
        """Stop it at once (SIGKILL), as a crash would."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()
