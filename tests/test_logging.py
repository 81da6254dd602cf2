"""``BANANA_LOG``: the library's log on stderr without code, and never the key in it.

Each test runs a real program in a subprocess (the variable is read at
import) against a FakeBananaServer on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from banana_async._logging import level_from_env
from banana_async.testing import FakeBananaServer, Fault
from tests.test_cli import run_cli, server_env

KEY = "sk-cli-test-5eCr3t-0123456789"

# A user's script: a batch of five with downloads, nothing about logging in it.
SCRIPT = """
import asyncio, os, sys
import banana_async as ba

async def main():
    async with ba.BananaClient(base_url=os.environ["BANANA_BASE_URL"], poll_interval=0.02) as c:
        prompts = [f"a cat, take {n}" for n in range(5)]
        async for outcome in c.generate_many(prompts, download_to=sys.argv[1]):
            assert outcome.ok, outcome

asyncio.run(main())
"""


async def run_script(env: Mapping[str, str], out: Path) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BANANA_")}
    environ.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        str(out),
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    errors = stderr.decode()
    assert proc.returncode == 0, errors
    assert stdout == b""
    return errors


@pytest.fixture
async def server() -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=KEY, duration=0.05) as fake:
        yield fake


async def test_banana_log_debug_shows_every_step_and_never_the_key(
    server: FakeBananaServer, tmp_path: Path
) -> None:
    # A careless provider echoes the key in an error page while the batch polls.
    echo = json.dumps({"error": f"bad gateway for Bearer {KEY} (key {KEY})"})
    server.inject(Fault.status(502, body=echo), on="query", times=2)
    err = await run_script({**server_env(server), "BANANA_LOG": "debug"}, tmp_path)
    assert KEY not in err
    assert KEY[-12:] not in err  # not even a part of it
    lines = err.splitlines()
    assert all(" banana_async: " in line for line in lines), err
    assert sum(" INFO banana_async: created task " in line for line in lines) == 5
    assert sum(" INFO banana_async: task " in line and "completed" in line for line in lines) == 5
    assert sum(" DEBUG banana_async: POST " in line for line in lines) == 5
    assert any(" DEBUG banana_async: GET " in line for line in lines)
    assert sum(" DEBUG banana_async: saved the image of task " in line for line in lines) == 5
    polls_failed = [line for line in lines if "polling" in line and "failed" in line]
    assert len(polls_failed) == 2
    assert all("HTTP 502" in line for line in polls_failed)
    assert len(list(tmp_path.glob("*.png"))) == 5


async def test_banana_log_info_leaves_out_the_debug_lines(
    server: FakeBananaServer, tmp_path: Path
) -> None:
    err = await run_script({**server_env(server), "BANANA_LOG": "INFO "}, tmp_path)
    assert "created task" in err
    assert " DEBUG " not in err


async def test_without_banana_log_the_library_writes_nothing(
    server: FakeBananaServer, tmp_path: Path
) -> None:
    assert await run_script(server_env(server), tmp_path) == ""
    assert await run_script({**server_env(server), "BANANA_LOG": ""}, tmp_path) == ""


async def test_the_cli_with_banana_log_and_v_logs_each_line_once(
    server: FakeBananaServer, tmp_path: Path
) -> None:
    env = {**server_env(server), "BANANA_LOG": "info"}
    code, _, err = await run_cli("-vv", "generate", "a cat", "--out", str(tmp_path), env=env)
    assert code == 0, err
    # -vv asks for more than BANANA_LOG=info: the more verbose wins ...
    assert " DEBUG banana_async: POST " in err
    # ... through one handler: no line twice.
    created = [line for line in err.splitlines() if "INFO banana_async: created task" in line]
    assert len(created) == 1

    code, _, err = await run_cli("generate", "a cat", "--out", str(tmp_path), env=env)
    assert code == 0, err
    assert "INFO banana_async: created task" in err  # BANANA_LOG alone, through the CLI
    assert " DEBUG " not in err


@pytest.mark.parametrize(
    ("value", "level"),
    [("", None), ("  ", None), ("debug", 10), ("INFO", 20), ("warning", 30), ("yes", 20)],
)
def test_level_from_env(value: str, level: int | None) -> None:
    assert level_from_env({"BANANA_LOG": value}) == level
    assert level_from_env({}) is None
