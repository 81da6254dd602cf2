"""Journal writes on a full disk: real SQLite failures, no mocks.

Two real ways to make writes fail:

- ``Journal.max_pages`` (SQLite's ``max_page_count`` on the journal's own
  connection), in this process: a write that needs the file to grow fails
  with SQLITE_FULL ("database or disk is full"). Writes that fit in pages the
  file already has (free space in a page, pages freed by earlier writes) still
  succeed, so these tests make every entry larger than a page (it spills into
  overflow pages, and rewriting it needs new ones) and use up the free pages
  before capping.
- ``RLIMIT_FSIZE`` of 0 in a child process, with SIGXFSZ ignored: every
  ``write()`` to a regular file fails (EFBIG), so every commit fails, with
  SQLITE_IOERR_WRITE ("disk I/O error"), whatever the state of the file.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import banana_async as ba
from banana_async.journal import EntryState, Journal, JournalEntry

# About three pages of text: every entry holding it lives mostly in overflow pages.
BIG_TEXT = "a very detailed prompt " * 500
BIG = ba.GenerationRequest(BIG_TEXT)


def task(task_id: str, status: ba.TaskStatus) -> ba.Task:
    return ba.Task(task_id, status, status.value)


def fill(journal: Journal) -> None:
    """Big entries for each write of WRITES, then a bigger one that takes every free page."""
    for index in (0, 1, 2, 4, 5):
        journal.record_sending(index, BIG)
    for index in (1, 5):
        journal.record_created(index, task(f"t{index}", ba.TaskStatus.QUEUED))
    journal.record_finished(2, task("t2", ba.TaskStatus.COMPLETED))
    # Rewriting an entry frees its old overflow pages; this insert reuses them
    # (and more), so the file has no free page left when it is capped.
    journal.record_error(99, None, ValueError("filler"), raw_input="f" * 100_000)


# Each write is legal on the filled journal, alone or after the ones above it.
WRITES: list[tuple[str, Callable[[Journal], object]]] = [
    ("record_sending", lambda j: j.record_sending(3, BIG)),
    ("record_created", lambda j: j.record_created(0, task("t0", ba.TaskStatus.QUEUED))),
    ("record_finished", lambda j: j.record_finished(1, task("t1", ba.TaskStatus.COMPLETED))),
    ("record_download", lambda j: j.record_download(2, "out/t2.png")),
    ("record_unconfirmed", lambda j: j.record_unconfirmed(4, BIG, TimeoutError("lost"))),
    ("note_error", lambda j: j.note_error(5, TimeoutError("slow"))),
    ("record_error", lambda j: j.record_error(6, None, ValueError("bad"), raw_input=BIG_TEXT)),
]


def test_max_pages(journal: Journal, path: Path) -> None:
    default = journal.max_pages
    assert default >= 2**30 - 1  # SQLite's default cap: in effect, none
    journal.record_sending(0, BIG)
    journal.max_pages = 1  # below the file's size: capped at its size
    capped = journal.max_pages
    assert 1 < capped < default
    journal.max_pages = capped + 10
    assert journal.max_pages == capped + 10
    journal.max_pages = default
    assert journal.max_pages == default
    journal.max_pages = 1
    journal.close()
    with Journal.open(path) as again:  # a setting of the open journal, not of the file
        assert again.max_pages == default


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10"])
def test_max_pages_must_be_a_positive_int(journal: Journal, value: object) -> None:
    with pytest.raises(ValueError, match="max_pages"):
        journal.max_pages = value  # type: ignore[assignment]


def test_max_pages_of_a_closed_journal(path: Path) -> None:
    journal = Journal.open(path)
    journal.close()
    with pytest.raises(ValueError, match="is closed"):
        journal.max_pages = 10


@pytest.mark.parametrize(("name", "write"), WRITES, ids=[name for name, _ in WRITES])
def test_a_write_that_cannot_grow_the_file_fails_and_changes_nothing(
    journal: Journal, path: Path, name: str, write: Callable[[Journal], object]
) -> None:
    fill(journal)
    before = list(journal.entries())
    default = journal.max_pages
    journal.max_pages = 1  # the disk is full now

    with pytest.raises(sqlite3.OperationalError, match="database or disk is full") as info:
        write(journal)
    assert info.value.sqlite_errorname == "SQLITE_FULL"
    # Rolled back: every entry as it was, and the journal still reads.
    assert list(journal.entries()) == before
    assert journal.counts()[EntryState.CREATED] == 2
    # No transaction was left open: the same write fails the same way again.
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        write(journal)

    journal.max_pages = default  # space again
    write(journal)
    after = list(journal.entries())
    assert after != before
    journal.close()
    with Journal.open(path) as again:
        assert list(again.entries()) == after


def test_every_kind_of_write_fails_in_turn(journal: Journal, path: Path) -> None:
    """One capped journal through all the writes; then all of them succeed."""
    fill(journal)
    before = list(journal.entries())
    default = journal.max_pages
    journal.max_pages = 1
    for name, write in WRITES:
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            write(journal)
        assert list(journal.entries()) == before, name
    journal.max_pages = default
    for _, write in WRITES:
        write(journal)
    entries = {e.index: e for e in journal.entries()}
    assert {i: e.state for i, e in entries.items()} == {
        0: EntryState.CREATED,
        1: EntryState.COMPLETED,
        2: EntryState.COMPLETED,
        3: EntryState.SENDING,
        4: EntryState.UNCONFIRMED,
        5: EntryState.CREATED,
        6: EntryState.ERROR,
        99: EntryState.ERROR,
    }
    assert entries[2].path == "out/t2.png"
    assert entries[5].error == "slow"
    journal.close()
    with Journal.open(path) as again:
        assert list(again.entries()) == list(entries.values())


# -- a real full disk, in a child process -----------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, resource, signal, sqlite3, sys
    from banana_async.errors import JournalError
    from banana_async.journal import Journal
    from banana_async.models import GenerationRequest, Task, TaskStatus

    def full(on):
        # With SIGXFSZ ignored, a write() past the limit fails with EFBIG
        # instead of killing the process; a limit of 0 stops every write
        # to a regular file (the pipes to the parent are not files).
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0 if on else hard, hard))

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    journal_path, new_path = sys.argv[1], sys.argv[2]
    request = GenerationRequest("a cat")
    report = {}

    journal = Journal.open(journal_path)
    for i in (0, 1, 2, 4, 5, 7):
        journal.record_sending(i, request)
    for i in (1, 5):
        journal.record_created(i, Task(f"t{i}", TaskStatus.QUEUED, "queued"))
    journal.record_finished(2, Task("t2", TaskStatus.COMPLETED, "completed"))
    before = [repr(e) for e in journal.entries()]
    writes = {
        "record_sending": lambda: journal.record_sending(3, request),
        "record_created": lambda: journal.record_created(0, Task("t0", TaskStatus.QUEUED, "q")),
        "record_finished": lambda: journal.record_finished(1, Task("t1", TaskStatus.FAILED, "f")),
        "record_download": lambda: journal.record_download(2, "out/t2.png"),
        "record_unconfirmed": lambda: journal.record_unconfirmed(4, request, ValueError("x")),
        "note_error": lambda: journal.note_error(5, TimeoutError("slow")),
        "record_error": lambda: journal.record_error(6, None, ValueError("bad"), raw_input="{"),
        "mark_resend": lambda: journal.mark_resend(7),
        "fingerprint": lambda: setattr(journal, "fingerprint", "sha256:abc"),
        "bind_provider": lambda: journal.bind_provider("nano", "https://a", "https://b"),
    }
    full(True)
    for name, write in writes.items():
        try:
            write()
            report[name] = "ok"
        except sqlite3.Error as exc:
            report[name] = [type(exc).__name__, exc.sqlite_errorname, str(exc)]
        report[name + " unchanged"] = [repr(e) for e in journal.entries()] == before
    try:
        Journal.open(new_path).close()
        report["open new"] = "ok"
    except JournalError as exc:
        report["open new"] = [str(exc), type(exc.__cause__).__name__]
    full(False)
    report["after"] = {}
    for name, write in writes.items():
        write()
        report["after"][name] = "ok"
    journal.close()
    Journal.open(new_path).close()
    print(json.dumps(report))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_fails_every_write_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "batch.sqlite"
    new = tmp_path / "new.sqlite"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(new)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not done.stderr, done.stderr
    report = json.loads(done.stdout)

    for name in (
        "record_sending",
        "record_created",
        "record_finished",
        "record_error",
        "record_unconfirmed",
        "note_error",
        "record_download",
        "fingerprint",
        "bind_provider",
        "mark_resend",
    ):
        kind, code, message = report[name]
        assert kind == "OperationalError", name
        assert code.startswith("SQLITE_IOERR"), (name, code)
        assert message == "disk I/O error", name
        assert report[name + " unchanged"], name
    assert report["after"] == dict.fromkeys(report["after"], "ok")
    assert len(report["after"]) == 10

    # Opening a new journal on a full disk says so (it is not "not a journal").
    message, cause = report["open new"]
    assert message.startswith(f"cannot open journal {str(new)!r}: disk I/O error")
    assert cause == "OperationalError"

    with Journal.open(path) as journal:
        assert journal.fingerprint == "sha256:abc"
        assert journal.provider is not None
        entries = {e.index: e for e in journal.entries()}
    assert {i: e.state for i, e in entries.items()} == {
        0: EntryState.CREATED,
        1: EntryState.FAILED,
        2: EntryState.COMPLETED,
        3: EntryState.SENDING,
        4: EntryState.UNCONFIRMED,
        5: EntryState.CREATED,
        6: EntryState.ERROR,
    }
    assert entries[5].error == "slow"
    assert entries[2] == JournalEntry(
        2,
        EntryState.COMPLETED,
        ba.GenerationRequest("a cat"),
        task_id="t2",
        task=task("t2", ba.TaskStatus.COMPLETED),
        path="out/t2.png",
        updated_at=entries[2].updated_at,
    )
    with Journal.open(new) as journal:
        assert list(journal.entries()) == []
