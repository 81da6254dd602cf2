"""The ``banana-async`` command line, in-process (``main``) and as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

import banana_async as ba
from banana_async._png import PNG_SIGNATURE
from banana_async.cli import main
from banana_async.cli.commands import demo
from banana_async.cli.progress import RichBar, Stats
from banana_async.cli.prompt_file import PromptFile
from banana_async.testing import FakeBananaServer, Fault, TaskScript

KEY = "sk-cli-test-5eCr3t-0123456789"
FAST = ["--poll-interval", "0.02"]
T = TypeVar("T")


class ServerThread:
    """A FakeBananaServer on its own event loop in a thread, so ``main()`` can run here."""

    def __init__(self, server: FakeBananaServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def run(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on the server's loop (the server reads that loop's clock)."""

        async def call() -> T:
            return fn()

        return self.call(call())

    def start(self) -> None:
        self._thread.start()
        self.call(self.server.start())

    def stop(self) -> None:
        self.call(self.server.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


@contextlib.contextmanager
def fake_in_a_thread() -> Iterator[ServerThread]:
    """A fake provider (tasks of 50 ms, key ``KEY``) on a thread of its own."""
    thread = ServerThread(FakeBananaServer(api_key=KEY, duration=0.05))
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def point_user_at(monkeypatch: pytest.MonkeyPatch, thread: ServerThread) -> ServerThread:
    """Set a user's environment (key, base URL, no dialect) to use ``thread``'s provider."""
    monkeypatch.setenv("BANANA_API_KEY", KEY)
    monkeypatch.setenv("BANANA_BASE_URL", thread.server.url)
    monkeypatch.delenv("BANANA_DIALECT", raising=False)
    return thread


@pytest.fixture
def threaded() -> Iterator[ServerThread]:
    with fake_in_a_thread() as thread:
        yield thread


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, threaded: ServerThread) -> ServerThread:
    """The environment of a user pointed at the threaded fake provider."""
    return point_user_at(monkeypatch, threaded)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert KEY not in out
    assert KEY not in err
    assert "Traceback" not in err
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(r, dict) for r in records)
    return records


def is_png(path: str | Path) -> bool:
    with Path(path).open("rb") as file:
        return file.read(8) == PNG_SIGNATURE


def fail_prompts(*prompts: str) -> Callable[[dict[str, Any]], TaskScript]:
    def script_for(body: dict[str, Any]) -> TaskScript:
        if body.get("prompt") in prompts:
            return TaskScript(duration=0.05, outcome="fail", error="content policy violation")
        return TaskScript(duration=0.05)

    return script_for


# -- usage ----------------------------------------------------------------------------


def test_help_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for command in ("generate", "batch", "status", "demo"):
        assert command in out
    assert "BANANA_API_KEY" in out


def test_missing_api_key_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BANANA_API_KEY", raising=False)
    code, out, err = run_main(capsys, "status", "abc")
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert "BANANA_API_KEY" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "generate", "a cat", "--size", "7:3")
    assert code == 2
    assert "--size" in err
    assert "7:3" in err


def test_bad_option_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(capsys, "batch", "f.txt", "--out", "o", "--concurrency", "0")[0] == 2
    assert run_main(capsys, "generate", "a cat", "--timeout", "-1")[0] == 2
    assert run_main(capsys, "generate")[0] == 2  # no prompt
    assert run_main(capsys, "frobnicate")[0] == 2


def test_unknown_model_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    code, _, err = run_main(
        capsys, "batch", str(prompts), "--out", str(tmp_path), "--model", "dall-e-9"
    )
    assert code == 2
    assert "dall-e-9" in err
    assert "--allow-unknown-models" in err  # the option, not the keyword argument
    assert "allow_unknown_models" not in err
    assert env.server.count("create") == 0


def test_unknown_dialect_from_the_environment(
    capsys: pytest.CaptureFixture[str], env: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANANA_DIALECT", "banana")
    code, _, err = run_main(capsys, "status", "abc")
    assert code == 2
    assert "dialect" in err


def test_plain_http_to_a_remote_host_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANANA_API_KEY", KEY)
    code, _, err = run_main(capsys, "--base-url", "http://example.com", "status", "abc")
    assert code == 2
    assert "TLS" in err


def test_missing_batch_file(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    code, _, err = run_main(capsys, "batch", str(tmp_path / "nope.txt"), "--out", str(tmp_path))
    assert code == 2
    assert "nope.txt" in err


# -- generate and status ------------------------------------------------------------------


def test_generate_downloads_the_image(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    code, out, err = run_main(
        capsys, "generate", "a cat", "--size", "16:9", "--out", str(tmp_path), *FAST
    )
    assert code == 0, err
    (task_id,) = env.server.tasks
    assert f"task       {task_id}" in out
    assert "completed" in out
    assert env.server.image_url(task_id) in out
    saved = tmp_path / f"{task_id}.png"
    assert f"saved      {saved}" in out
    assert is_png(saved)
    assert env.server.tasks[task_id].body["size"] == "16:9"
    assert f"created task {task_id}" in err


def test_generate_json_and_global_options_after_the_command(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    code, out, err = run_main(
        capsys, "generate", "a cat", "--json", "--dialect", "navo", "--out", str(tmp_path), *FAST
    )
    assert code == 0
    assert err == ""
    (record,) = json_lines(out)
    assert record["ok"] is True
    assert record["status"] == "completed"
    assert is_png(record["path"])
    assert env.server.tasks[record["task_id"]].dialect == "navo"


def test_generate_quiet_prints_only_the_path(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    code, out, err = run_main(capsys, "-q", "generate", "a cat", "--out", str(tmp_path), *FAST)
    assert code == 0
    assert err == ""
    assert is_png(out.strip())


def test_generate_failed_task_exits_1(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    env.run(lambda: env.server.plan(TaskScript(outcome="fail", error="content policy")))
    code, out, err = run_main(capsys, "generate", "a cat", "--out", str(tmp_path), *FAST)
    assert code == 1
    assert "failed" in out
    assert err.splitlines()[-1].startswith("error: task ")
    assert "content policy" in err
    assert list(tmp_path.iterdir()) == []


def test_generate_timeout_names_the_task(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    env.run(lambda: env.server.plan(TaskScript(duration=None)))
    code, _, err = run_main(
        capsys, "generate", "a cat", "--out", str(tmp_path), "--timeout", "0.2", *FAST
    )
    assert code == 1
    (task_id,) = env.server.tasks
    assert f"banana-async status {task_id}" in err


def test_generate_resolution_warning_is_one_line(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    # nano-banana-2 ignores 4k on the nano dialect: a warning, not an error.
    code, _, err = run_main(
        capsys, "generate", "a cat", "--resolution", "4K", "--out", str(tmp_path), *FAST
    )
    assert code == 0
    (warning,) = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert "ignores resolution '4k' on the 'nano' dialect" in warning


async def create_task(url: str) -> str:
    async with ba.BananaClient(KEY, base_url=url) as client:
        task = await client.create("a cat")
    return task.id


def test_status_prints_the_task(capsys: pytest.CaptureFixture[str], env: ServerThread) -> None:
    env.run(lambda: env.server.plan(TaskScript(duration=None)))
    task_id = asyncio.run(create_task(env.server.url))
    code, out, _ = run_main(capsys, "status", task_id)
    assert code == 0
    assert f"task       {task_id}" in out
    assert "status     processing" in out

    env.run(lambda: env.server.finish(task_id))
    code, out, _ = run_main(capsys, "--json", "status", task_id)
    assert code == 0
    (record,) = json_lines(out)
    assert record["task_id"] == task_id
    assert record["status"] == "completed"
    assert record["image_url"] == env.server.image_url(task_id)

    assert run_main(capsys, "-q", "status", task_id)[1] == "completed\n"


def test_status_of_an_unknown_task(capsys: pytest.CaptureFixture[str], env: ServerThread) -> None:
    code, out, err = run_main(capsys, "status", "no-such-task")
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    # Says what a 404 may mean here, and which flags to check.
    assert "task no-such-task: no such task" in err
    assert "--base-url" in err
    assert "404" in err


def test_verbose_logs_without_the_key(
    capsys: pytest.CaptureFixture[str], env: ServerThread
) -> None:
    env.run(lambda: env.server.plan(TaskScript(duration=None)))
    task_id = asyncio.run(create_task(env.server.url))
    code, _, err = run_main(capsys, "-vv", "status", task_id)
    assert code == 0
    assert "DEBUG banana_async: GET" in err


# -- batch ------------------------------------------------------------------------------


TEXT_PROMPTS = """\
# holiday cards
a red fox in the snow

a blue whale, watercolour
   # an indented comment
a green parrot
"""


def test_batch_text_file_skips_blank_and_comment_lines(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    out_dir = tmp_path / "out"
    env.server.script_for = fail_prompts("a blue whale, watercolour")
    code, out, _ = run_main(
        capsys, "--json", "batch", str(prompts), "--out", str(out_dir), "--size", "1:1", *FAST
    )
    assert code == 1
    records = sorted(json_lines(out), key=lambda r: r["index"])
    assert [(r["index"], r["line"], r["ok"]) for r in records] == [
        (0, 2, True),
        (1, 4, False),
        (2, 6, True),
    ]
    for record in records:
        assert {"index", "ok", "task_id", "path", "error"} <= record.keys()
        assert record["task_id"] in env.server.tasks
    assert "content policy violation" in records[1]["error"]
    assert records[1]["error_type"] == "TaskFailedError"
    assert records[1]["path"] is None
    assert is_png(records[0]["path"])
    assert Path(records[0]["path"]).parent == out_dir
    assert {t.body["size"] for t in env.server.tasks.values()} == {"1:1"}


def test_batch_all_succeed_exits_0_with_progress_and_summary(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    code, out, err = run_main(capsys, "batch", str(prompts), "--out", str(tmp_path), *FAST)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith("ok ") for line in lines)
    assert {line.split()[1:3][1] for line in lines} == {"2", "4", "6"}  # "line N"
    # Not a terminal: plain progress lines, the last one complete, then a summary.
    assert "batch prompts.txt: 3/3, 3 done, 0 failed" in err
    assert err.splitlines()[-1].startswith("3 inputs in ")


JSONL_PROMPTS = """\
{"prompt": "a red fox", "size": "16:9"}
{"prompt": "a blue whale", "size": "7:3"}

{"prompt": "a green parrot",
{"prompt": "a lighthouse", "model": "nano-banana-pro", "resolution": "2k"}
{"prompt": "a koala", "colour": "grey"}
"""


def test_batch_jsonl_bad_lines_become_failed_outcomes(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(JSONL_PROMPTS)
    code, out, err = run_main(
        capsys, "--json", "batch", str(prompts), "--out", str(tmp_path), *FAST
    )
    assert code == 1
    assert err == ""
    by_line = {r["line"]: r for r in json_lines(out)}
    assert sorted(by_line) == [1, 2, 4, 5, 6]
    assert [by_line[n]["index"] for n in (1, 2, 4, 5, 6)] == [0, 1, 2, 3, 4]
    assert by_line[1]["ok"] is True
    assert by_line[5]["ok"] is True
    assert "7:3" in by_line[2]["error"]
    assert "not valid JSON" in by_line[4]["error"]
    assert "colour" in by_line[6]["error"]
    for n in (2, 4, 6):
        assert by_line[n]["ok"] is False
        assert by_line[n]["task_id"] is None
        assert by_line[n]["error_type"] == "InvalidRequestError"
    bodies = sorted((t.body["prompt"], t.body.get("size")) for t in env.server.tasks.values())
    assert bodies == [("a lighthouse", None), ("a red fox", "16:9")]
    lighthouse = next(t for t in env.server.tasks.values() if t.body["prompt"] == "a lighthouse")
    assert lighthouse.body["model"] == "nano-banana-pro"
    assert lighthouse.body["resolution"] == "2k"


def test_batch_detects_json_lines_by_content(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('# comment\n{"prompt": "a red fox"}\n\n{"prompt": "a blue whale"}\n')
    code, out, _ = run_main(capsys, "--json", "batch", str(prompts), "--out", str(tmp_path), *FAST)
    assert code == 0
    assert sorted(t.body["prompt"] for t in env.server.tasks.values()) == [
        "a blue whale",
        "a red fox",
    ]
    assert len(json_lines(out)) == 2


def test_batch_human_output_reports_bad_lines(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "a red fox"}\n{"prompt": "bad \xff byte"}\n')
    code, out, _ = run_main(capsys, "-q", "batch", str(prompts), "--out", str(tmp_path), *FAST)
    assert code == 1
    (line,) = out.splitlines()  # --quiet: failures only
    assert line.startswith("failed line 2")
    assert "not valid UTF-8" in line


def test_batch_journal_resumes_without_new_creates(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    journal = tmp_path / "batch.sqlite"
    argv = ["--json", "batch", str(prompts), "--out", str(tmp_path / "out")]
    argv += ["--journal", str(journal), *FAST]
    assert run_main(capsys, *argv)[0] == 0
    assert env.server.count("create") == 3

    code, out, _ = run_main(capsys, *argv)
    assert code == 0
    assert env.server.count("create") == 3
    records = json_lines(out)
    assert len(records) == 3
    assert all(r["from_journal"] and r["ok"] for r in records)


def test_batch_with_another_batchs_journal_exits_3(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    first = tmp_path / "first.txt"
    first.write_text(TEXT_PROMPTS)
    argv = ["--json", "batch", str(first), "--out", str(tmp_path / "out")]
    assert run_main(capsys, *argv, "--journal", str(journal), *FAST)[0] == 0
    created = env.server.count("create")
    other = tmp_path / "other.txt"
    other.write_text("a different prompt\n")
    argv = ["batch", str(other), "--out", str(tmp_path / "out")]
    code, _, err = run_main(capsys, *argv, "--journal", str(journal), *FAST)
    assert code == 3
    assert "another batch" in err
    assert env.server.count("create") == created  # nothing sent for it


def test_resend_unconfirmed_without_a_journal_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    argv = ["batch", str(prompts), "--out", str(tmp_path), "--resend-unconfirmed", *FAST]
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert "--resend-unconfirmed needs --journal" in err
    assert env.server.count("create") == 0


def test_batch_of_an_empty_file(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# nothing yet\n\n")
    code, out, _ = run_main(capsys, "batch", str(prompts), "--out", str(tmp_path))
    assert code == 0
    assert out == ""


def test_prompt_file_is_read_lazily(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {n}\n" for n in range(10_000)))
    stats = Stats(total=None, concurrency=1)
    reader = PromptFile(prompts, jsonl=False, defaults={}, stats=stats)
    inputs = reader.inputs()
    assert next(inputs) == "prompt 0"
    assert next(inputs) == "prompt 1"
    assert stats.read == 2
    assert len(reader.lines) == 2
    inputs.close()


def test_rich_progress_bar_renders(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich")
    stats = Stats(total=4, concurrency=2)
    stats.read, stats.ok, stats.failed = 4, 3, 1
    bar = RichBar("batch", stats.total)
    bar.start()
    bar.update(stats)
    bar.stop()
    err = capsys.readouterr().err
    assert "4/4" in err
    assert "3 done, 1 failed" in err


# -- real subprocesses --------------------------------------------------------------------


async def run_cli(
    *argv: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    proc = await start_cli(*argv, env=env, cwd=cwd)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    text, errors = out.decode(), err.decode()
    assert KEY not in text
    assert KEY not in errors
    assert "Traceback" not in errors
    return proc.returncode, text, errors


async def start_cli(
    *argv: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BANANA_")}
    environ.update(env or {})
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
        cwd=cwd,
    )


def server_env(server: FakeBananaServer) -> dict[str, str]:
    return {"BANANA_API_KEY": KEY, "BANANA_BASE_URL": server.url}


async def test_python_m_help() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    assert "usage: banana-async" in out


async def test_demo_writes_pngs_and_exits_0(tmp_path: Path) -> None:
    # No API key, no base URL: the demo brings its own provider.
    code, out, err = await run_cli("demo", cwd=tmp_path)
    assert code == 0, err
    pngs = sorted((tmp_path / "banana-demo-out").glob("*.png"))
    assert len(pngs) == 18  # 20 prompts, 2 scripted to fail
    assert all(p.suffix == ".png" and is_png(p) for p in pngs)
    assert out.count("(expected: scripted by the demo)") == 2
    assert "demo finished as designed" in out
    assert "demo: 20/20, 18 done, 2 failed" in err  # plain progress on a pipe
    page = tmp_path / "banana-demo-out" / "index.html"  # what a newcomer opens
    assert out.endswith(
        f"gallery: banana-demo-out/index.html; open it in a browser: {page.as_uri()}\n"
    )


def test_demo_json_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BANANA_API_KEY", raising=False)
    monkeypatch.setattr(demo, "DEMO_DURATIONS", (0.01, 0.05))
    argv = ["--json", "demo", "--count", "3", "--out", str(tmp_path), "--dialect", "navo", *FAST]
    code, out, err = run_main(capsys, *argv)
    assert code == 0, err
    assert err == ""
    *records, gallery = json_lines(out)  # the page's object comes last
    assert gallery["gallery"] == str(tmp_path / "index.html")
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    assert [r["expected_failure"] for r in sorted(records, key=lambda r: r["index"])] == [
        False,
        False,
        True,
    ]


async def test_batch_in_a_subprocess(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    async with FakeBananaServer(api_key=KEY, duration=0.05) as server:
        server.script_for = fail_prompts("a green parrot")
        argv = ["--json", "batch", str(prompts), "--out", str(tmp_path / "out"), *FAST]
        code, out, err = await run_cli(*argv, env=server_env(server))
        assert code == 1, err
        records = sorted(json_lines(out), key=lambda r: r["index"])
        assert [(r["line"], r["ok"]) for r in records] == [(2, True), (4, True), (6, False)]
        assert all(is_png(r["path"]) for r in records[:2])

        server.script_for = None
        code, out, err = await run_cli(*argv, env=server_env(server))
        assert code == 0, err
        assert all(r["ok"] for r in json_lines(out))


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


async def test_ctrl_c_exits_130_and_the_journal_resumes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    journal = tmp_path / "batch.sqlite"
    argv = ["--json", "batch", str(prompts), "--out", str(tmp_path / "out")]
    argv += ["--journal", str(journal), *FAST]
    async with FakeBananaServer(api_key=KEY, duration=None) as server:
        proc = await start_cli(*argv, env=server_env(server))
        try:
            # Every task created and polled: the journal has all three ids.
            await wait_for(
                lambda: len({r.task_id for r in server.requests if r.kind == "query"}) == 3,
                "three tasks polled",
            )
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 130
        message = err.decode()
        assert "Traceback" not in message
        assert "interrupted" in message
        assert f"--journal {journal}" in message
        assert out.decode() == ""

        for task_id in list(server.tasks):
            server.finish(task_id)
        code, text, errors = await run_cli(*argv, env=server_env(server))
        assert code == 0, errors
        assert server.count("create") == 3  # nothing created twice
        records = json_lines(text)
        assert len(records) == 3
        assert all(r["ok"] and is_png(r["path"]) for r in records)


def test_demo_quiet_prints_nothing_and_still_writes_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quiet"
    assert main(["demo", "--out", str(out), "--quiet", "--count", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 3  # one of four is scripted to fail
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)


def test_batch_jsonl_lone_surrogates_are_bad_lines_not_a_traceback(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "bad \\ud800"}\n'
        '{"prompt": "a fox", "model": "\\udfff"}\n'
        '{"prompt": "a fox", "image_urls": ["http://[::1/x.png"]}\n'
        '{"prompt": "a red fox"}\n'
    )
    code, out, err = run_main(
        capsys, "--json", "batch", str(prompts), "--out", str(tmp_path), *FAST
    )
    assert code == 1
    assert err == ""
    by_line = {r["line"]: r for r in json_lines(out)}
    assert sorted(by_line) == [1, 2, 3, 4]
    assert by_line[4]["ok"] is True
    for n in (1, 2, 3):
        assert by_line[n]["ok"] is False
        assert by_line[n]["error_type"] == "InvalidRequestError"
    assert "surrogate" in by_line[1]["error"]
    assert env.server.count("create") == 1


def test_an_echoed_key_never_reaches_stderr(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    escaped = "".join(f"\\u{ord(c):04x}" if c == "-" else c for c in KEY)
    body = '{"error": "key ' + escaped + ' is not allowed"}'
    env.run(lambda: env.server.inject(Fault.status(403, body=body), on="create"))
    code, _, err = run_main(capsys, "generate", "a cat", "--out", str(tmp_path), *FAST)
    assert code != 0
    assert "[redacted]" in err
    assert escaped not in err


@pytest.mark.parametrize("words", ["refused \ud800", "refused \x1b]52;c;cHduZWQ=\x07\x1b[2J \x85"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_provider_text_reaches_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str],
    env: ServerThread,
    tmp_path: Path,
    words: str,
    as_json: bool,
) -> None:
    # A lone surrogate cannot be printed at all, and control characters
    # would drive the terminal: both arrive escaped, in every command.
    env.run(lambda: env.server.plan(TaskScript(duration=0.0, outcome="fail", error=words)))
    json_flag = ["--json"] if as_json else []
    code, out, err = run_main(
        capsys, *json_flag, "generate", "a cat", "--out", str(tmp_path), *FAST
    )
    assert code == 1
    task_id = next(iter(env.server.tasks))
    status_code, status_out, status_err = run_main(capsys, *json_flag, "status", task_id)
    assert status_code == 0
    for text in (out, err, status_out, status_err):
        text.encode("utf-8")  # printable
        assert "\x1b" not in text
        assert "\x85" not in text
    if as_json:
        for line in (*out.splitlines(), *status_out.splitlines()):
            json.loads(line)  # still JSON
    assert "refused" in out + err
