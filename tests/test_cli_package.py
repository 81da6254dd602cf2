"""The ``banana_async.cli`` package: lazy command modules, the command table, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sqlite3
import sys
from typing import Any

import pytest

import banana_async as ba
from banana_async import cli
from banana_async.cli import commands
from banana_async.cli.exit_codes import ExitCode, exit_code_for
from banana_async.cli.parser import build_parser
from banana_async.testing import FakeBananaServer

KEY = "sk-cli-package-0123456789"

# Run in a fresh interpreter: prints, as its last line, which of the heavy
# modules it ended up with. Nothing but `import banana_async...` and main().
PROBE = """
import json, sys
{setup}
heavy = sorted(
    name for name in sys.modules
    if name == "banana_async.testing"
    or name.startswith(("banana_async.testing.", "aiohttp.web"))
)
print(json.dumps({{"code": code, "heavy": heavy, "modules": sorted(sys.modules)}}))
"""


async def probe(setup: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run PROBE with ``setup`` in a new interpreter; its report and its stdout before it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BANANA_")}
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBE.format(setup=setup),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    *printed, last = out.decode().splitlines()
    report: dict[str, Any] = json.loads(last)
    report["printed"] = printed
    report["stderr"] = err.decode()
    return report


async def test_status_runs_without_the_fake_server_or_aiohttp_web() -> None:
    async with FakeBananaServer(api_key=KEY, duration=None) as server:
        async with ba.BananaClient(KEY, base_url=server.url) as client:
            task = await client.create("a cat")
        server.finish(task.id)
        setup = f"from banana_async.cli import main\ncode = main(['--json', 'status', {task.id!r}])"
        report = await probe(setup, {"BANANA_API_KEY": KEY, "BANANA_BASE_URL": server.url})
    assert report["code"] == 0, report["stderr"]
    (line,) = report["printed"]
    assert json.loads(line)["status"] == "completed"  # the command really ran
    assert "banana_async.cli.commands.status" in report["modules"]
    assert report["heavy"] == []
    for other in ("generate", "batch", "demo"):
        assert f"banana_async.cli.commands.{other}" not in report["modules"]


async def test_parser_and_the_api_commands_import_nothing_heavy() -> None:
    setup = (
        "import banana_async.cli.parser\n"
        "import banana_async.cli.commands.status\n"
        "import banana_async.cli.commands.generate\n"
        "import banana_async.cli.commands.batch\n"
        "banana_async.cli.parser.build_parser().parse_args(['status', 'x'])\n"
        "code = 0"
    )
    report = await probe(setup)
    assert report["heavy"] == []


async def test_the_probe_sees_the_demo_load_the_fake_server() -> None:
    # The control: the same probe does notice the heavy modules when they load.
    report = await probe("import banana_async.cli.commands.demo\ncode = 0")
    assert "banana_async.testing" in report["heavy"]
    assert "aiohttp.web" in report["heavy"]


def test_every_command_of_the_parser_has_a_module() -> None:
    (subparsers,) = (
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert set(subparsers.choices) == set(commands.COMMANDS)
    for name in commands.COMMANDS:
        command = commands.load(name)
        assert inspect.iscoroutinefunction(command)
        assert command.__module__ == commands.COMMANDS[name]


def test_exit_code_values_are_the_documented_ones() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "USAGE": 2,
        "JOURNAL": 3,
        "INTERRUPTED": 130,
        "TERMINATED": 143,
    }
    assert cli.ExitCode is ExitCode
    assert "ExitCode" in cli.__all__


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ba.InvalidRequestError("bad option"), ExitCode.USAGE),
        (ba.JournalError("in use by another command", path="j.db"), ExitCode.JOURNAL),
        (ba.UnconfirmedCreateError("maybe created", index=0), ExitCode.FAILED),
        (ba.NotFoundError("no such task", status_code=404, body=""), ExitCode.FAILED),
        (ba.TaskTimeoutError("abc", 1.0, None), ExitCode.FAILED),
        (FileNotFoundError("gone"), ExitCode.FAILED),
        (sqlite3.OperationalError("disk I/O error"), ExitCode.FAILED),
        (RuntimeError("a bug"), None),
        (KeyError("a bug"), None),
    ],
)
def test_exit_code_for_an_error(error: BaseException, code: ExitCode | None) -> None:
    assert exit_code_for(error) is code


def test_main_returns_an_exit_code_member(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BANANA_API_KEY", raising=False)
    code = cli.main(["status", "abc"])
    assert code is ExitCode.USAGE
    assert capsys.readouterr().err.startswith("error: no API key")
