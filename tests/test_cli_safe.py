"""A CLI that never wastes a paid task: checks before creates, ``download``, the manifest.

Each test runs ``main()`` against a real FakeBananaServer on loopback (in a
thread of its own) and counts the creates the provider saw.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banana_async.cli.commands.batch import MANIFEST
from banana_async.cli.common import RunState
from banana_async.cli.progress import Stats
from banana_async.testing import FakeBananaServer, Fault, TaskScript
from tests.test_cli import (
    FAST,
    KEY,
    TEXT_PROMPTS,
    ServerThread,
    create_task,
    fail_prompts,
    fake_in_a_thread,
    is_png,
    json_lines,
    point_user_at,
    run_main,
    server_env,
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    """The environment of a user pointed at a fake provider in a thread."""
    with fake_in_a_thread() as thread:
        yield point_user_at(monkeypatch, thread)


# -- checked before any create ------------------------------------------------------------


def test_batch_out_that_is_a_file_fails_before_any_create(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    # The mistake a user makes: --out given the prompt file itself.
    code, out, err = run_main(capsys, "batch", str(prompts), "--out", str(prompts), *FAST)
    assert code == 2
    assert out == ""
    assert f"--out {prompts} is a file, not a folder" in err
    assert env.server.count("create") == 0
    assert env.server.count() == 0
    assert prompts.read_text() == TEXT_PROMPTS


def test_batch_out_that_cannot_be_created_fails_before_any_create(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    under_a_file = prompts / "images"
    code, _, err = run_main(capsys, "batch", str(prompts), "--out", str(under_a_file), *FAST)
    assert code == 2
    assert "cannot create the folder" in err
    assert env.server.count() == 0


def test_batch_of_a_binary_file_fails_before_any_create(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    # An image given as FILE by mistake: its "lines" would each be a paid task.
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    code, out, err = run_main(capsys, "batch", str(image), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2
    assert out == ""
    assert "looks like a binary file" in err
    assert "nothing was sent" in err
    assert env.server.count() == 0


def test_a_line_of_control_characters_is_a_bad_line_not_a_create(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a cat\n\x1a\x02\x7f\nthe moon\ttonight\n")
    code, out, _ = run_main(
        capsys, "--json", "batch", str(prompts), "--out", str(tmp_path / "o"), *FAST
    )
    assert code == 1
    by_line = {record["line"]: record for record in json_lines(out)}
    assert by_line[1]["ok"]
    assert by_line[3]["ok"]  # a tab is fine
    assert not by_line[2]["ok"]
    assert "control characters" in by_line[2]["error"]
    assert env.server.count("create") == 2


def test_generate_out_that_is_a_file_fails_before_the_create(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    a_file = tmp_path / "cat.png"
    a_file.write_bytes(b"not a folder")
    code, _, err = run_main(capsys, "generate", "a cat", "--out", str(a_file), *FAST)
    assert code == 2
    assert "is a file, not a folder" in err
    assert env.server.count() == 0


def test_batch_journal_that_cannot_be_opened_fails_before_any_create(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    not_a_journal = tmp_path / "notes.txt"
    not_a_journal.write_text("my notes, not a journal\n" * 50)
    argv = ["batch", str(prompts), "--out", str(tmp_path / "out"), "--journal", str(not_a_journal)]
    code, _, err = run_main(capsys, *argv, *FAST)
    assert code == 3
    assert "notes.txt" in err
    assert env.server.count() == 0
    assert not_a_journal.read_text() == "my notes, not a journal\n" * 50


@pytest.mark.parametrize(
    ("journal", "says"),
    [("", "is a folder, not a journal file"), ("missing/j.sqlite", "does not exist")],
)
def test_batch_journal_in_a_wrong_place_fails_before_anything(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path, journal: str, says: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    out_dir = tmp_path / "out"
    argv = ["batch", str(prompts), "--out", str(out_dir), "--journal", str(tmp_path / journal)]
    code, _, err = run_main(capsys, *argv, *FAST)
    assert code == 3
    assert says in err
    assert env.server.count() == 0
    assert not out_dir.exists()  # stopped before even the folder was made


def test_batch_of_a_folder_says_folder(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    code, _, err = run_main(capsys, "batch", str(tmp_path), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2
    assert "is a folder, not a prompt file" in err
    assert "no such file" not in err


# -- download ID... --out DIR -------------------------------------------------------------


def test_generate_timeout_points_at_download_which_saves_the_image(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    env.run(lambda: env.server.plan(TaskScript(duration=None)))
    out_dir = tmp_path / "images"
    code, _, err = run_main(
        capsys, "generate", "a cat", "--out", str(out_dir), "--timeout", "0.2", *FAST
    )
    assert code == 1
    (task_id,) = env.server.tasks
    assert f"banana-async status {task_id}" in err
    hint = f"banana-async download {task_id} --out {out_dir}"
    assert hint in err

    # Following the hint before the task is done saves nothing, and says why.
    code, out, err = run_main(capsys, "download", task_id, "--out", str(out_dir))
    assert code == 1
    assert "has not finished" in err
    assert list(out_dir.iterdir()) == []

    env.run(lambda: env.server.finish(task_id))
    code, out, err = run_main(capsys, "download", task_id, "--out", str(out_dir))
    assert code == 0, err
    saved = out_dir / f"{task_id}.png"
    assert f"saved   {task_id} {saved}" in out
    assert is_png(saved)
    assert env.server.count("create") == 1  # download never creates


def test_download_reports_each_id_and_exits_1_if_any_is_not_saved(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    env.run(lambda: env.server.plan(*[TaskScript(duration=None)] * 3))
    done, failed, expired = (asyncio.run(create_task(env.server.url)) for _ in range(3))
    env.run(lambda: env.server.finish(done))
    env.run(lambda: env.server.fail(failed, "content policy violation"))
    env.run(lambda: env.server.finish(expired))
    out_dir = tmp_path / "saved"
    code, out, err = run_main(capsys, "--json", "download", done, "--out", str(out_dir))
    assert code == 0, err
    (record,) = json_lines(out)
    assert record == {
        "task_id": done,
        "ok": True,
        "status": "completed",
        "path": str(out_dir / f"{done}.png"),
        "error": None,
    }
    assert is_png(record["path"])

    # The image host has forgotten the next link (a day later, say).
    env.run(lambda: env.server.inject(Fault.status(404), on="image"))
    argv = ["download", failed, "no-such-task", expired, failed, "--out", str(out_dir)]
    code, out, err = run_main(capsys, *argv)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3  # each id once, in the order given
    assert (
        lines[0] == f"failed  {failed} the task failed: content policy violation; it has no image"
    )
    assert lines[1].startswith("failed  no-such-task no such task")
    assert lines[2].startswith(f"failed  {expired} the image URL has expired or is gone (HTTP 404")
    assert len(err.splitlines()) == 4  # one error line per id, and the count
    assert err.splitlines()[-1] == f"0 of 3 images saved in {out_dir}"
    assert sorted(path.name for path in out_dir.iterdir()) == [f"{done}.png"]
    assert env.server.count("create") == 3


def test_download_needs_an_id_and_a_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(capsys, "download", "--out", "x")[0] == 2
    code, _, err = run_main(capsys, "download", "abc")
    assert code == 2
    assert "--out" in err


def test_interrupted_generate_points_at_status_and_download() -> None:
    state = RunState()
    state.task_id = "task-7"
    state.out = "cards"
    message = state.interrupted()
    assert "banana-async status task-7" in message
    assert "banana-async download task-7 --out cards" in message


def test_interrupted_batch_points_at_its_manifest() -> None:
    state = RunState()
    state.stats = Stats(total=3, concurrency=2)
    state.manifest = "cards/manifest.jsonl"
    state.resumable = True
    message = state.interrupted()
    assert "What finished is listed in cards/manifest.jsonl." in message
    assert "Pass --journal PATH" in message


def test_batch_timeouts_point_at_download(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    env.run(lambda: env.server.plan(TaskScript(duration=None), TaskScript(duration=0.01)))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a slow one\na quick one\n")
    out_dir = tmp_path / "out"
    argv = ["batch", str(prompts), "--out", str(out_dir), "--concurrency", "1"]
    code, _, err = run_main(capsys, *argv, "--timeout", "0.3", *FAST)
    assert code == 1
    slow = next(iter(env.server.tasks))
    assert f"1 task(s) did not finish in time; check later with `banana-async status {slow}`" in err
    assert f"banana-async download {slow} --out {out_dir}" in err


# -- the manifest, reruns, --retry-failed --------------------------------------------------


def manifest(folder: Path) -> list[dict[str, Any]]:
    return json_lines((folder / MANIFEST).read_text(encoding="utf-8"))


def test_batch_writes_a_manifest(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    env.run(lambda: setattr(env.server, "script_for", fail_prompts("a blue whale, watercolour")))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    out_dir = tmp_path / "out"
    code, _, err = run_main(capsys, "batch", str(prompts), "--out", str(out_dir), *FAST)
    assert code == 1
    assert f"list in {out_dir / MANIFEST}" in err
    records = sorted(manifest(out_dir), key=lambda r: r["index"])
    assert [(r["index"], r["line"], r["prompt"]) for r in records] == [
        (0, 2, "a red fox in the snow"),
        (1, 4, "a blue whale, watercolour"),
        (2, 6, "a green parrot"),
    ]
    fox, whale, parrot = records
    for record in (fox, parrot):
        assert record["ok"] is True
        assert record["status"] == "completed"
        assert Path(record["file"]) == out_dir / f"{record['task_id']}.png"
        assert is_png(record["file"])
        assert env.server.tasks[record["task_id"]].body["prompt"] == record["prompt"]
    assert whale["ok"] is False
    assert whale["status"] == "failed"
    assert whale["file"] is None
    assert "content policy violation" in whale["error"]
    assert whale["task_id"] in env.server.tasks


def test_retry_failed_creates_the_failed_ones_again_and_nothing_else(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    env.run(lambda: setattr(env.server, "script_for", fail_prompts("a green parrot")))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    out_dir = tmp_path / "out"
    argv = ["--json", "batch", str(prompts), "--out", str(out_dir)]
    argv += ["--journal", str(tmp_path / "j.sqlite"), *FAST]
    assert run_main(capsys, *argv)[0] == 1
    assert env.server.count("create") == 3

    # Without the flag the failure comes back from the journal, for nothing.
    code, out, _ = run_main(capsys, *argv)
    assert code == 1
    assert env.server.count("create") == 3
    reported = json_lines(out)
    assert all(r["from_journal"] for r in reported)
    assert sorted((r["ok"], r["prompt"]) for r in reported)[0] == (False, "a green parrot")

    env.run(lambda: setattr(env.server, "script_for", None))
    code, out, err = run_main(capsys, *argv, "--retry-failed")
    assert code == 0, err
    assert env.server.count("create") == 4  # the parrot only
    records = {r["prompt"]: r for r in json_lines(out)}
    assert records["a green parrot"]["ok"] is True
    assert records["a green parrot"]["from_journal"] is False
    assert records["a red fox in the snow"]["from_journal"] is True
    assert is_png(records["a green parrot"]["path"])

    # Retried and done: a later run creates nothing, flag or not.
    assert run_main(capsys, *argv, "--retry-failed")[0] == 0
    assert env.server.count("create") == 4


def test_retry_failed_needs_a_journal(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    code, _, err = run_main(
        capsys, "batch", str(prompts), "--out", str(tmp_path), "--retry-failed", *FAST
    )
    assert code == 2
    assert "--retry-failed needs --journal" in err
    assert env.server.count() == 0


def test_rerun_with_another_out_leaves_the_images_and_says_where(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TEXT_PROMPTS)
    journal = tmp_path / "j.sqlite"
    first, second = tmp_path / "first", tmp_path / "second"
    argv = ["batch", str(prompts), "--journal", str(journal), *FAST]
    assert run_main(capsys, *argv, "--out", str(first))[0] == 0
    images = env.server.count("image")

    code, _, err = run_main(capsys, *argv, "--out", str(second))
    assert code == 0
    assert f"3 image(s) saved by an earlier run stay in {first}" in err
    assert env.server.count("create") == 3
    assert env.server.count("image") == images  # nothing downloaded again
    assert len(list(first.glob("*.png"))) == 3
    assert list(second.glob("*.png")) == []
    # The new folder's manifest still says where each image is.
    assert {Path(r["file"]).parent for r in manifest(second)} == {first}


# -- standard input, models, messages ---------------------------------------------------


def test_batch_reads_prompts_from_standard_input(
    capsys: pytest.CaptureFixture[str],
    env: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    piped = io.TextIOWrapper(io.BytesIO(TEXT_PROMPTS.encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", piped)
    out_dir = tmp_path / "out"
    code, out, err = run_main(capsys, "--json", "batch", "-", "--out", str(out_dir), *FAST)
    assert code == 0, err
    records = sorted(json_lines(out), key=lambda r: r["index"])
    assert [(r["line"], r["prompt"]) for r in records] == [
        (2, "a red fox in the snow"),
        (4, "a blue whale, watercolour"),
        (6, "a green parrot"),
    ]
    assert all(is_png(r["path"]) for r in records)


def test_batch_reads_json_lines_from_standard_input(
    capsys: pytest.CaptureFixture[str],
    env: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [{"prompt": "a red fox", "size": "16:9"}, {"prompt": "a whale", "size": "1:1"}]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    code, out, err = run_main(capsys, "--json", "batch", "-", "--out", str(tmp_path), *FAST)
    assert code == 0, err
    sizes = {env.server.tasks[r["task_id"]].body["size"] for r in json_lines(out)}
    assert sizes == {"16:9", "1:1"}


def test_models_lists_what_the_dialect_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--json", "models", "--dialect", "navo")
    assert code == 0
    records = json_lines(out)
    assert {r["model"] for r in records} == {"nano-banana-fast", "nano-banana-pro", "nano-banana-2"}
    assert all(r["dialect"] == "navo" for r in records)
    code, out, _ = run_main(capsys, "models")
    assert code == 0
    assert "nano-banana-pro-stable" in out
    assert "2k" in out


def test_demo_help_offers_no_base_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "demo", "--help")
    assert code == 0
    assert "--base-url" not in out
    assert "--model" in out


def test_a_rate_is_not_in_seconds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["batch", "f", "--out", str(tmp_path), "--requests-per-second", "0"]
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert "--requests-per-second" in err
    assert "seconds" not in err.split("--requests-per-second", 1)[1]


def test_messages_name_the_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BANANA_API_KEY", "sk-whatever-0123456789")
    code, _, err = run_main(capsys, "--base-url", "ftp://example.com", "status", "abc")
    assert code == 2
    assert "--base-url" in err
    assert "base_url" not in err
    code, _, err = run_main(capsys, "generate", "a cat", "--model", "nano-banana-9")
    assert code == 2
    assert "--allow-unknown-models" in err
    assert "allow_unknown_models" not in err


# -- real processes: a pipe on standard input, Ctrl-C while it waits for more -------------


async def start_with_stdin(*argv: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BANANA_")}
    # As a user's shell has it: a developer's PYTHONUNBUFFERED once hid
    # result lines that waited in the pipe's buffer until the exit.
    environ.pop("PYTHONUNBUFFERED", None)
    environ.update(env)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async",
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )


async def test_batch_from_a_pipe_and_ctrl_c_while_the_pipe_is_open(tmp_path: Path) -> None:
    async with FakeBananaServer(api_key=KEY, duration=0.05) as server:
        argv = ["--json", "batch", "-", "--out", str(tmp_path / "out"), *FAST]
        proc = await start_with_stdin(*argv, env=server_env(server))
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(b"a red fox\na blue whale\n")
            await proc.stdin.drain()
            # Both done while the writer has not closed the pipe: the batch
            # does not wait for the end of the input to start.
            async with asyncio.timeout(60):
                first = json.loads(await proc.stdout.readline())
                second = json.loads(await proc.stdout.readline())
            assert {first["prompt"], second["prompt"]} == {"a red fox", "a blue whale"}
            assert is_png(first["path"])
            # Ctrl-C while the reader thread is blocked on the open pipe.
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 130
        assert "Traceback" not in err.decode()
        assert server.count("create") == 2


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_bidi_controls_in_prompts_and_errors_reach_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path, as_json: bool
) -> None:
    # "Trojan Source": a right-to-left override shows "a cat exe.txt" as
    # "a cat txt.exe"; the terminal gets the escapes, never the controls.
    cat = "a cat \u202etxt.exe\u202c"
    dog = "a dog \u2066" + BIDI + "\u2069"
    env.run(lambda: setattr(env.server, "script_for", fail_prompts(dog)))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{cat}\n{dog}\n", encoding="utf-8")
    flags = ["--json"] if as_json else []
    code, out, err = run_main(
        capsys, *flags, "batch", str(prompts), "--out", str(tmp_path / "o"), *FAST
    )
    assert code == 1
    for char in BIDI + "\u2028\u2029":
        assert char not in out + err
    if as_json:
        # Still JSON, and the prompts read back as they were.
        assert {r["prompt"] for r in json_lines(out)} == {cat, dog}
    else:
        assert '"a cat \\u202etxt.exe\\u202c"' in out
        assert "\\u2066\\u202a\\u202b" in out
    # The task of the dog failed with the provider's error: the same on stderr.
    env.run(lambda: env.server.plan(TaskScript(duration=0.0, outcome="fail", error=dog)))
    code, out, err = run_main(capsys, *flags, "generate", "a cat", "--out", str(tmp_path), *FAST)
    assert code == 1
    for char in BIDI:
        assert char not in out + err
    assert "\\u2066\\u202a" in out + err
