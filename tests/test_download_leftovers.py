"""Temporary files of killed downloads: the next download removes them, never a live one's.

Real processes, real files, real loopback HTTP. The age rule is met by
backdating a file's mtime with ``os.utime``, never by waiting.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import banana_async as ba
from banana_async import download
from banana_async.testing import FakeBananaServer, Fault

from .conftest import API_KEY

HOUR = 3600.0

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGKILL are POSIX")

# Downloads one image into argv[3] with a client of the server at argv[1].
CHILD = """
import asyncio, sys
import banana_async as ba

async def main() -> None:
    base_url, image_url, dest = sys.argv[1:]
    task = ba.Task(id="killed", status=ba.TaskStatus.COMPLETED, image_url=image_url)
    async with ba.BananaClient("k", base_url=base_url) as client:
        await client.download(task, dest)

asyncio.run(main())
"""


@pytest.fixture(autouse=True)
def fresh_sweep_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no directory swept, whatever ran before it."""
    monkeypatch.setattr(download, "_last_sweeps", {}, raising=False)


@pytest.fixture
async def banana(server: FakeBananaServer) -> AsyncIterator[ba.BananaClient]:
    async with ba.BananaClient(API_KEY, base_url=server.url, timeout=30) as client:
        yield client


async def completed(banana: ba.BananaClient, server: FakeBananaServer) -> ba.Task:
    task = await banana.create("a cat")
    server.finish(task.id)
    task = await banana.get(task.id)
    assert task.status is ba.TaskStatus.COMPLETED
    return task


async def wait_for(condition: Callable[[], bool]) -> None:
    """Wait for another process or task to get somewhere (a guard, not a measure)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 30 s")


def parts_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".part"))


def backdate(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` old: the age rule without any waiting."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# -- (a) a download killed with SIGKILL ------------------------------------------------------


@posix_only
async def test_the_part_of_a_killed_download_is_removed_by_the_next_download(
    banana: ba.BananaClient, server: FakeBananaServer, tmp_path: Path
) -> None:
    # The child's image request stalls, so it is killed mid-download.
    server.inject(Fault.stall(60), on="image")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, server.url, server.image_url("killed"), str(tmp_path)
    )
    try:
        await wait_for(lambda: server.count("image") == 1 and bool(parts_in(tmp_path)))
        [part] = parts_in(tmp_path)
        assert part.name.startswith(".killed.")
        # Alive, the child holds the file's lock: even an old-looking file stays.
        backdate(part, HOUR)
        assert download._sweep_stale_parts(tmp_path, force=True) == []
        assert part.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL
    assert parts_in(tmp_path) == [part]  # nothing else removes it

    # Past the grace for a file between its creation and its lock; and the
    # sweep above is forgotten, or the download would not list the folder again.
    backdate(part, HOUR)
    download._last_sweeps.clear()
    task = await completed(banana, server)
    path = await banana.download(task, tmp_path)

    assert sorted(tmp_path.iterdir()) == [path]
    assert path.name == f"{task.id}.png"


# -- (b) a live download's part is never removed ---------------------------------------------


@posix_only
async def test_a_live_download_in_this_process_keeps_its_part(
    banana: ba.BananaClient, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed(banana, server)
    server.inject(Fault.stall(60), on="image")
    live = asyncio.create_task(banana.download(task, tmp_path))
    await wait_for(lambda: server.count("image") == 1)
    [part] = parts_in(tmp_path)
    assert download._PART_NAME.fullmatch(part.name)
    backdate(part, HOUR)  # old by its mtime: only the lock tells that it is live

    assert download._sweep_stale_parts(tmp_path, force=True) == []
    assert parts_in(tmp_path) == [part]

    live.cancel()
    with pytest.raises(asyncio.CancelledError):
        await live
    assert list(tmp_path.iterdir()) == []


@posix_only
async def test_a_concurrent_download_into_the_folder_keeps_a_live_part(
    banana: ba.BananaClient, server: FakeBananaServer, tmp_path: Path
) -> None:
    first, second = await completed(banana, server), await completed(banana, server)
    server.inject(Fault.stall(60), on="image")
    live = asyncio.create_task(banana.download(first, tmp_path))
    await wait_for(lambda: server.count("image") == 1)
    [part] = parts_in(tmp_path)
    backdate(part, HOUR)
    download._last_sweeps.clear()  # the second download sweeps too

    path = await banana.download(second, tmp_path)

    assert sorted(tmp_path.iterdir()) == sorted([part, path])
    live.cancel()
    with pytest.raises(asyncio.CancelledError):
        await live


@posix_only
async def test_a_part_locked_by_another_process_is_kept(tmp_path: Path) -> None:
    part = tmp_path / ".held.abcd1234.banana.part"
    part.write_bytes(b"\x89PNG")
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'rb')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n",
        str(part),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert await holder.stdout.readline() == b"locked\n"
        backdate(part, HOUR)
        assert download._sweep_stale_parts(tmp_path, force=True) == []
        assert part.exists()
    finally:
        holder.stdin.close()
        await holder.wait()
    # The holder has exited: its lock went with it.
    assert download._sweep_stale_parts(tmp_path, force=True) == [part]
    assert not part.exists()


@posix_only
def test_a_young_unlocked_part_is_kept(tmp_path: Path) -> None:
    """Between mkstemp and flock a writer's file is unlocked; its age protects it."""
    part = tmp_path / ".young.abcd1234.banana.part"
    part.write_bytes(b"")
    assert download._sweep_stale_parts(tmp_path, force=True) == []
    backdate(part, download._LOCKABLE_GRACE + 1)
    assert download._sweep_stale_parts(tmp_path, force=True) == [part]


# -- (c) only our own names ---------------------------------------------------------------------


@posix_only
def test_files_that_only_end_in_part_are_never_touched(tmp_path: Path) -> None:
    others = [
        "video.part",  # a browser's partial download
        ".video.part",
        ".t.abcd1234.part",  # our naming without the marker
        "t.abcd1234.banana.part",  # not hidden
        "..t.abcd1234.banana.part",  # no stem of ours starts with a dot
        ".t.ABCD1234.banana.part",  # mkstemp's random part is lowercase
        ".t.abcd1234.banana.part.bak",
        ".t/x.banana.part",  # (in a subdirectory)
    ]
    (tmp_path / ".t").mkdir()
    for name in others:
        (tmp_path / name).write_bytes(b"keep")
        backdate(tmp_path / name, 100 * HOUR)
    directory = tmp_path / ".d.abcd1234.banana.part"
    directory.mkdir()
    backdate(directory, 100 * HOUR)
    target = tmp_path / "target.png"
    target.write_bytes(b"keep")
    link = tmp_path / ".s.abcd1234.banana.part"
    link.symlink_to(target)
    ours = tmp_path / ".t.abcd1234.banana.part"
    ours.write_bytes(b"stale")
    backdate(ours, 100 * HOUR)
    before = sorted(tmp_path.rglob("*"))

    assert download._sweep_stale_parts(tmp_path, force=True) == [ours]

    assert sorted(tmp_path.rglob("*")) == [p for p in before if p != ours]
    assert target.read_bytes() == b"keep"


# -- once per directory and interval -----------------------------------------------------------


def test_a_directory_is_swept_once_per_interval(tmp_path: Path) -> None:
    assert download._sweep_stale_parts(tmp_path) == []
    part = tmp_path / ".late.abcd1234.banana.part"
    part.write_bytes(b"")
    backdate(part, HOUR)

    assert download._sweep_stale_parts(tmp_path) == []  # swept just now: not listed
    assert part.exists()
    assert download._sweep_stale_parts(tmp_path, force=True) == [part]


def test_a_missing_directory_is_no_error(tmp_path: Path) -> None:
    assert download._sweep_stale_parts(tmp_path / "missing", force=True) == []


def test_without_flock_only_age_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no fcntl; that platform cannot run here, so its absence is simulated."""
    monkeypatch.setattr(download, "_fcntl", None)
    recent = tmp_path / ".recent.abcd1234.banana.part"
    old = tmp_path / ".old.abcd1234.banana.part"
    for path, age in [(recent, 10 * 60), (old, 2 * HOUR)]:
        path.write_bytes(b"")
        backdate(path, age)

    assert download._sweep_stale_parts(tmp_path, force=True) == [old]
    assert recent.exists()
