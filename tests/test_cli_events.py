"""The command line shows where tasks stand through the client's status events."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

import banana_async as ba
from banana_async.cli.progress import Stats
from banana_async.testing import FakeBananaServer, TaskScript

from .conftest import live_client

KEY = "sk-cli-events-0123456789abcdef"
FAST = ["--poll-interval", "0.02"]


async def start(*argv: str, server: FakeBananaServer) -> asyncio.subprocess.Process:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BANANA_")}
    environ.update({"BANANA_API_KEY": KEY, "BANANA_BASE_URL": server.url})
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    try:
        async with asyncio.timeout(60):  # a hung CLI fails the test instead of the run
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_generate_shows_each_status_change_once(tmp_path: Path) -> None:
    async with FakeBananaServer(api_key=KEY) as server:
        # Four polls: processing three times, then completed.
        server.plan(TaskScript(queries=4))
        proc = await start("generate", "a cat", "--out", str(tmp_path), *FAST, server=server)
        code, _, err = await finish(proc)
        assert code == 0, err
        (task_id,) = server.tasks
        assert server.count("query") == 4
    lines = err.splitlines()
    created = lines.index(f"created task {task_id}; waiting for it to finish...")
    changes = [line for line in lines if line.startswith(f"task {task_id}: ")]
    assert changes == [f"task {task_id}: processing", f"task {task_id}: completed"]
    assert lines.index(changes[0]) > created


async def test_generate_json_shows_no_status_lines(tmp_path: Path) -> None:
    async with FakeBananaServer(api_key=KEY) as server:
        server.plan(TaskScript(queries=2))
        proc = await start(
            "--json", "generate", "a cat", "--out", str(tmp_path), *FAST, server=server
        )
        code, _, err = await finish(proc)
    assert code == 0, err
    assert ": processing" not in err


async def test_batch_progress_counts_tasks_by_status_and_ctrl_c_tells_how_many(
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("done at once\nstill running 1\nstill running 2\n")

    def script(body: dict[str, object]) -> TaskScript:
        return TaskScript(queries=1) if body["prompt"] == "done at once" else TaskScript(None)

    argv = ["batch", str(prompts), "--out", str(tmp_path / "out"), *FAST]
    async with FakeBananaServer(api_key=KEY) as server:
        server.script_for = script
        proc = await start(*argv, server=server)
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(60):
                # Standard error is a pipe: a plain progress line every 2 s.
                while True:
                    line = (await proc.stderr.readline()).decode()
                    assert line, f"the CLI ended early: {seen}"
                    if "in flight (2 processing)" in line:
                        break
                    seen.append(line)
            proc.send_signal(signal.SIGINT)
        finally:
            code, _, err = await finish(proc)
        running = sorted(
            (task for task in server.tasks.values() if task.body["prompt"] != "done at once"),
            key=lambda task: str(task.body["prompt"]),
        )
    assert code == 130
    assert "batch prompts.txt: 1/3, 1 done, 0 failed, 2 in flight (2 processing)" in line
    assert "interrupted: 1 done, 0 failed, 2 created task(s) were in flight (creates" in err
    # Without a journal, the ids of the paid tasks in flight are only here.
    ids = " ".join(task.id for task in running)
    assert f"banana-async download {ids} --out {tmp_path / 'out'}" in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
async def test_sigterm_stops_a_journaled_batch_as_ctrl_c_does(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("done at once\nstill running 1\nstill running 2\n")
    journal = tmp_path / "batch.sqlite"

    def script(body: dict[str, object]) -> TaskScript:
        return TaskScript(queries=1) if body["prompt"] == "done at once" else TaskScript(None)

    argv = ["batch", str(prompts), "--out", str(tmp_path / "out"), "--journal", str(journal)]
    async with FakeBananaServer(api_key=KEY) as server:
        server.script_for = script
        proc = await start(*argv, *FAST, server=server)
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(60):
                while "in flight (2 processing)" not in (await proc.stderr.readline()).decode():
                    pass
            proc.send_signal(signal.SIGTERM)
        finally:
            code, _, err = await finish(proc)
        assert code == 143
        assert "interrupted: 1 done, 0 failed, 2 created task(s) were in flight (creates" in err
        assert "to resume" in err
        assert "Traceback" not in err
        # The journal is consistent: a rerun polls the two tasks, creates nothing.
        for task_id, task in list(server.tasks.items()):
            if task.body["prompt"] != "done at once":
                server.finish(task_id)
        rerun = await start(*argv, *FAST, server=server)
        code, _, err = await finish(rerun)
        assert code == 0, err
        assert server.count("create") == 3


async def test_stats_follow_the_events_of_a_running_batch(live: FakeBananaServer) -> None:
    live.script_for = lambda body: TaskScript(duration=None)
    stats = Stats(total=4, concurrency=4)
    all_processing = asyncio.Event()

    def on_status(event: ba.TaskEvent) -> None:
        stats.on_status(event)
        if stats.statuses == dict.fromkeys(range(4), ba.TaskStatus.PROCESSING):
            all_processing.set()

    async with live_client(live) as client:
        batch = client.generate_many(["a", "b", "c", "d"], on_status=on_status)
        reading = asyncio.create_task(anext(batch))
        async with asyncio.timeout(30):  # a broken wiring fails instead of hanging
            await all_processing.wait()
        assert stats.in_flight() == 4
        assert "0/4, 0 done, 0 failed, 4 in flight (4 processing)" in stats.line()
        live.finish(next(iter(live.tasks)))
        outcome = await reading
        stats.add(outcome)
        assert stats.in_flight() == 3
        assert "1/4, 1 done, 0 failed, 3 in flight (3 processing)" in stats.line()
        await batch.aclose()
