"""The batch journal, on real SQLite files."""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest

import banana_async as ba
from banana_async.journal import (
    SCHEMA_VERSION,
    EntryState,
    Journal,
    JournalEntry,
    canonical_request,
)

from .conftest import reopened

REQUEST = ba.GenerationRequest(
    "a cat on a windowsill",
    model="nano-banana-pro",
    resolution="2k",
    size="16:9",
    image_urls=["https://example.com/ref.png"],
)
CREATED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def task(status: ba.TaskStatus, task_id: str = "task-1", **fields: str) -> ba.Task:
    return ba.Task(
        task_id,
        status,
        raw_status=status.value,
        created=CREATED_AT,
        model="Nano Banana Pro",
        object="image.generation",
        **fields,
    )


QUEUED = task(ba.TaskStatus.QUEUED)
COMPLETED = task(ba.TaskStatus.COMPLETED, image_url="https://cdn.example.com/1.png")
FAILED = task(ba.TaskStatus.FAILED, error="content policy")


# -- round trips -----------------------------------------------------------------


def test_new_journal_is_empty(journal: Journal, path: Path) -> None:
    assert path.exists()
    assert journal.get(0) is None
    assert list(journal.entries()) == []
    assert journal.counts() == dict.fromkeys(EntryState, 0)
    assert journal.fingerprint is None


def test_sending_created_completed_downloaded(journal: Journal, path: Path) -> None:
    before = time.time()
    sending = journal.record_sending(3, REQUEST)
    assert sending.state is EntryState.SENDING
    assert journal.get(3) == sending
    assert before <= sending.updated_at <= time.time()

    created = journal.record_created(3, QUEUED)
    assert journal.get(3) == created
    assert created.state is EntryState.CREATED
    assert created.task_id == "task-1"
    assert created.task == QUEUED
    assert created.request == REQUEST

    processing = task(ba.TaskStatus.PROCESSING)
    assert journal.record_created(3, processing).task == processing  # a newer snapshot

    finished = journal.record_finished(3, COMPLETED)
    assert finished.state is EntryState.COMPLETED
    assert finished.task == COMPLETED
    assert finished.error is None
    assert finished.path is None

    downloaded = journal.record_download(3, path.parent / "3.png")
    assert downloaded.path == str(path.parent / "3.png")
    assert downloaded.state is EntryState.COMPLETED
    assert journal.get(3) == downloaded

    journal.close()
    [entry] = reopened(path)
    assert entry == downloaded
    assert entry.request == REQUEST
    assert entry.task is not None
    assert entry.task.created == CREATED_AT


def test_failed_task(journal: Journal, path: Path) -> None:
    journal.record_sending(0, REQUEST)
    journal.record_created(0, QUEUED)
    entry = journal.record_finished(0, FAILED)
    assert entry.state is EntryState.FAILED
    assert entry.error == "content policy"
    assert entry.error_type == "TaskFailedError"
    journal.close()
    assert reopened(path) == [entry]


def test_failed_task_without_message(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    entry = journal.record_finished(0, task(ba.TaskStatus.FAILED, "t-9"))
    assert entry.error == "task t-9 failed"


def test_create_that_answers_finished(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    assert journal.record_finished(0, COMPLETED).task_id == "task-1"


def test_error_for_invalid_input(journal: Journal, path: Path) -> None:
    error = ba.InvalidRequestError("prompt must be a non-empty string")
    entry = journal.record_error(5, None, error, raw_input='{"prompt": ""}')
    assert entry == JournalEntry(
        5,
        EntryState.ERROR,
        raw_input='{"prompt": ""}',
        error="prompt must be a non-empty string",
        error_type="InvalidRequestError",
        updated_at=entry.updated_at,
    )
    journal.close()
    assert reopened(path) == [entry]


def test_error_after_sending_keeps_the_request(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    error = ba.BadRequestError("400: bad size", status_code=400)
    entry = journal.record_error(0, None, error)
    assert entry.state is EntryState.ERROR
    assert entry.request == REQUEST
    assert entry.error_type == "BadRequestError"
    assert journal.get(0) == entry


def test_error_without_message_names_its_type(journal: Journal) -> None:
    entry = journal.record_error(0, REQUEST, TimeoutError())
    assert entry.error == "TimeoutError"
    assert entry.request == REQUEST


def test_unconfirmed(journal: Journal, path: Path) -> None:
    journal.record_sending(1, REQUEST)
    error = ba.APITimeoutError("read timed out")
    entry = journal.record_unconfirmed(1, REQUEST, error)
    assert entry.state is EntryState.UNCONFIRMED
    assert entry.task_id is None
    assert entry.error == "read timed out"
    assert entry.error_type == "APITimeoutError"
    journal.close()
    assert reopened(path) == [entry]


def test_note_error_keeps_the_state(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    journal.record_created(0, QUEUED)
    noted = journal.note_error(0, ba.TaskTimeoutError("task-1", 60.0, QUEUED))
    assert noted.state is EntryState.CREATED
    assert noted.error_type == "TaskTimeoutError"
    assert noted.task == QUEUED
    assert journal.record_created(0, QUEUED).error is None

    journal.record_finished(0, COMPLETED)
    failed_download = journal.note_error(0, ba.DownloadError("not an image"))
    assert failed_download.state is EntryState.COMPLETED
    assert failed_download.error == "not an image"
    downloaded = journal.record_download(0, "0.png")
    assert downloaded.error is None
    assert downloaded.error_type is None


def test_final_states() -> None:
    assert {s for s in EntryState if not s.final} == {
        EntryState.SENDING,
        EntryState.CREATED,
        EntryState.ERROR,
    }


# -- reopening, order, counts ----------------------------------------------------


def fill(journal: Journal) -> None:
    """One entry in every state, written out of index order."""
    journal.record_sending(4, REQUEST)  # SENDING
    journal.record_sending(0, REQUEST)
    journal.record_created(0, task(ba.TaskStatus.QUEUED, "t0"))  # CREATED
    journal.record_sending(2, REQUEST)
    journal.record_finished(2, task(ba.TaskStatus.COMPLETED, "t2"))  # COMPLETED
    journal.record_sending(1, REQUEST)
    journal.record_finished(1, task(ba.TaskStatus.FAILED, "t1"))  # FAILED
    journal.record_error(10, None, ValueError("bad line"), raw_input="{")  # ERROR
    journal.record_sending(3, REQUEST)
    journal.record_unconfirmed(3, REQUEST, ba.ServerError("502", status_code=502))  # UNCONFIRMED


def test_reopen_sees_everything_in_index_order(journal: Journal, path: Path) -> None:
    fill(journal)
    before = list(journal.entries())
    assert [e.index for e in before] == [0, 1, 2, 3, 4, 10]
    assert [e.state for e in before] == [
        EntryState.CREATED,
        EntryState.FAILED,
        EntryState.COMPLETED,
        EntryState.UNCONFIRMED,
        EntryState.SENDING,
        EntryState.ERROR,
    ]
    assert [journal.get(e.index) for e in before] == before
    journal.close()
    assert reopened(path) == before


def test_counts(journal: Journal, path: Path) -> None:
    fill(journal)
    journal.record_sending(5, REQUEST)
    expected = dict.fromkeys(EntryState, 1)
    expected[EntryState.SENDING] = 2
    assert journal.counts() == expected
    journal.close()
    with Journal.open(path) as again:
        assert again.counts() == expected


def test_entries_can_be_written_while_iterating(journal: Journal) -> None:
    for i in range(3):
        journal.record_sending(i, REQUEST)
    for entry in journal.entries():
        journal.record_created(entry.index, task(ba.TaskStatus.QUEUED, f"t{entry.index}"))
    assert journal.counts()[EntryState.CREATED] == 3


def test_fingerprint(journal: Journal, path: Path) -> None:
    journal.fingerprint = "sha256:abc"
    assert journal.fingerprint == "sha256:abc"
    journal.close()
    with Journal.open(path) as again:
        assert again.fingerprint == "sha256:abc"
        again.fingerprint = None
        assert again.fingerprint is None


# -- request_matches ---------------------------------------------------------------


def test_request_matches(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    assert journal.request_matches(0, REQUEST)
    # Equal after normalisation: the same request written differently.
    same = ba.GenerationRequest(
        "a cat on a windowsill",
        model=ba.Model.NANO_BANANA_PRO,
        resolution="2K",
        size=ba.AspectRatio.R16_9,
        image_urls=("https://example.com/ref.png",),
    )
    assert journal.request_matches(0, same)
    assert not journal.request_matches(0, ba.GenerationRequest("a dog on a windowsill"))
    assert not journal.request_matches(0, ba.GenerationRequest(REQUEST.prompt))
    assert not journal.request_matches(0, None, raw_input="{}")
    assert not journal.request_matches(1, REQUEST)  # nothing recorded


def test_request_matches_invalid_input(journal: Journal) -> None:
    journal.record_error(0, None, ValueError("bad"), raw_input="line 1")
    assert journal.request_matches(0, None, raw_input="line 1")
    assert not journal.request_matches(0, None, raw_input="line 2")
    assert not journal.request_matches(0, REQUEST)


def test_canonical_request_is_sorted_json() -> None:
    text = canonical_request(REQUEST)
    assert text.startswith('{"image_urls":["https://example.com/ref.png"],"model":')
    assert canonical_request(ba.GenerationRequest("x")) == (
        '{"image_urls":[],"model":"nano-banana-2","prompt":"x"}'
    )


# -- illegal transitions ------------------------------------------------------------


def test_sending_twice_is_refused(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    with pytest.raises(ValueError, match="state 'sending'"):
        journal.record_sending(0, REQUEST)


def test_an_error_entry_may_be_sent_again(journal: Journal) -> None:
    journal.record_error(0, REQUEST, ValueError("connection refused"))
    again = journal.record_sending(0, REQUEST)
    assert again.state is EntryState.SENDING
    assert again.error is None
    assert journal.get(0) == again
    journal.record_created(0, QUEUED)
    assert journal.counts()[EntryState.CREATED] == 1


@pytest.mark.parametrize(
    "state",
    [EntryState.CREATED, EntryState.COMPLETED, EntryState.FAILED],
)
def test_no_new_create_over_an_entry(journal: Journal, state: EntryState) -> None:
    put(journal, 0, state)
    with pytest.raises(ValueError, match="cannot record a new create"):
        journal.record_sending(0, REQUEST)
    if state is EntryState.FAILED:
        # Forgotten only on request (batch --retry-failed): a new task, billed anew.
        journal.mark_resend(0)
        assert journal.get(0) is None
        return
    with pytest.raises(ValueError, match="cannot mark it to resend"):
        journal.mark_resend(0)
    assert journal.get(0) is not None


def put(journal: Journal, index: int, state: EntryState) -> None:
    """Bring entry ``index`` into ``state`` the legal way."""
    if state is EntryState.ERROR:
        journal.record_error(index, REQUEST, ValueError("bad"))
        return
    journal.record_sending(index, REQUEST)
    if state is EntryState.UNCONFIRMED:
        journal.record_unconfirmed(index, REQUEST, ConnectionResetError("reset"))
    elif state is EntryState.CREATED:
        journal.record_created(index, QUEUED)
    elif state is EntryState.COMPLETED:
        journal.record_finished(index, COMPLETED)
    elif state is EntryState.FAILED:
        journal.record_finished(index, FAILED)
    assert journal.counts()[state] >= 1


@pytest.mark.parametrize("state", [EntryState.COMPLETED, EntryState.FAILED])
def test_terminal_states_never_go_back(journal: Journal, state: EntryState) -> None:
    put(journal, 0, state)
    entry = journal.get(0)
    with pytest.raises(ValueError, match=f"state '{state.value}'"):
        journal.record_created(0, QUEUED)
    other_end = FAILED if state is EntryState.COMPLETED else COMPLETED
    with pytest.raises(ValueError, match=f"state '{state.value}'"):
        journal.record_finished(0, other_end)
    with pytest.raises(ValueError, match=f"state '{state.value}'"):
        journal.record_error(0, REQUEST, ValueError("x"))
    with pytest.raises(ValueError, match=f"state '{state.value}'"):
        journal.record_unconfirmed(0, REQUEST, ValueError("x"))
    assert journal.get(0) == entry  # nothing changed


def test_same_end_can_be_recorded_again(journal: Journal) -> None:
    put(journal, 0, EntryState.COMPLETED)
    downloaded = journal.record_download(0, "0.png")
    again = journal.record_finished(0, COMPLETED)
    assert again.state is EntryState.COMPLETED
    assert again.path == "0.png"
    assert journal.get(0) == again
    assert again.updated_at >= downloaded.updated_at
    put(journal, 1, EntryState.FAILED)
    assert journal.record_finished(1, FAILED).state is EntryState.FAILED
    with pytest.raises(ValueError, match="already has task task-1"):
        journal.record_finished(1, task(ba.TaskStatus.FAILED, "task-2"))


def test_error_can_be_recorded_again(journal: Journal) -> None:
    journal.record_error(0, None, ValueError("bad"), raw_input="line 1")
    again = journal.record_error(0, None, ValueError("still bad"))
    assert again.state is EntryState.ERROR
    assert again.error == "still bad"
    assert again.raw_input == "line 1"
    assert journal.get(0) == again


@pytest.mark.parametrize("state", [EntryState.ERROR, EntryState.UNCONFIRMED])
def test_final_states_take_no_task(journal: Journal, state: EntryState) -> None:
    put(journal, 0, state)
    with pytest.raises(ValueError, match="cannot record its task"):
        journal.record_created(0, QUEUED)
    with pytest.raises(ValueError, match="cannot record its end"):
        journal.record_finished(0, COMPLETED)


def test_nothing_recorded_is_refused(journal: Journal) -> None:
    for call in (
        lambda: journal.record_created(0, QUEUED),
        lambda: journal.record_finished(0, COMPLETED),
        lambda: journal.record_unconfirmed(0, REQUEST, ValueError("x")),
        lambda: journal.record_download(0, "x.png"),
        lambda: journal.note_error(0, ValueError("x")),
        lambda: journal.mark_resend(0),
    ):
        with pytest.raises(ValueError, match="nothing recorded"):
            call()
    assert journal.get(0) is None


def test_another_task_id_is_refused(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    journal.record_created(0, QUEUED)
    other = task(ba.TaskStatus.COMPLETED, "task-2")
    with pytest.raises(ValueError, match="already has task task-1"):
        journal.record_created(0, task(ba.TaskStatus.QUEUED, "task-2"))
    with pytest.raises(ValueError, match="already has task task-1"):
        journal.record_finished(0, other)
    assert journal.get(0) is not None
    assert journal.counts()[EntryState.CREATED] == 1


def test_unfinished_task_cannot_finish(journal: Journal) -> None:
    journal.record_sending(0, REQUEST)
    with pytest.raises(ValueError, match="has not finished"):
        journal.record_finished(0, QUEUED)


@pytest.mark.parametrize("state", [EntryState.SENDING, EntryState.CREATED, EntryState.FAILED])
def test_download_needs_completed(journal: Journal, state: EntryState) -> None:
    put(journal, 0, state)
    with pytest.raises(ValueError, match="cannot record a download"):
        journal.record_download(0, "x.png")


@pytest.mark.parametrize("index", [-1, True, 1.0, "1"])
def test_bad_index(journal: Journal, index: object) -> None:
    with pytest.raises(ValueError, match="journal index"):
        journal.get(index)  # type: ignore[arg-type]


def test_closed_journal(path: Path) -> None:
    journal = Journal.open(path)
    journal.close()
    journal.close()
    assert journal.closed
    assert "closed" in repr(journal)
    with pytest.raises(ValueError, match="is closed"):
        journal.get(0)


# -- mark_resend ------------------------------------------------------------------------


@pytest.mark.parametrize("state", [EntryState.SENDING, EntryState.UNCONFIRMED])
def test_mark_resend(journal: Journal, path: Path, state: EntryState) -> None:
    put(journal, 0, state)
    journal.mark_resend(0)
    assert journal.get(0) is None
    journal.close()
    with Journal.open(path) as again:
        assert again.get(0) is None
        again.record_sending(0, REQUEST)
        assert again.record_created(0, QUEUED).state is EntryState.CREATED


# -- files that are not journals -----------------------------------------------------------


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.sqlite"
    noise = os.urandom(8192)
    path.write_bytes(noise)
    with pytest.raises(ba.JournalError, match="not a banana_async journal") as info:
        Journal.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == noise
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.sqlite"]


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"prompt": "a cat"}\n' * 100)
    with pytest.raises(ba.JournalError, match=re.escape(str(path))):
        Journal.open(path)


def test_other_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
        db.commit()
    content = path.read_bytes()
    with pytest.raises(ba.JournalError, match="not a banana_async journal") as info:
        Journal.open(path)
    assert str(path) in str(info.value)
    # A journal that cannot be used is no bad argument value: since issue #8
    # it is a JournalError, and on purpose no longer a ValueError.
    assert isinstance(info.value, ba.BananaError)
    assert not isinstance(info.value, ValueError)
    assert info.value.path == str(path)
    assert path.read_bytes() == content  # not converted to WAL, nothing added
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite"]


def test_other_meta_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('application', 'something-else')")
        db.commit()
    with pytest.raises(ba.JournalError, match="not a banana_async journal"):
        Journal.open(path)


def set_meta(path: Path, key: str, value: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        db.commit()


def test_newer_schema_is_refused(path: Path) -> None:
    Journal.open(path).close()
    set_meta(path, "schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(ba.JournalError, match="newer banana_async") as info:
        Journal.open(path)
    assert str(path) in str(info.value)


def test_unreadable_schema_version_is_refused(path: Path) -> None:
    Journal.open(path).close()
    set_meta(path, "schema_version", "one")
    with pytest.raises(ba.JournalError, match="layout version one"):
        Journal.open(path)


def test_damaged_entry_is_reported(path: Path) -> None:
    with Journal.open(path) as journal:
        journal.record_sending(0, REQUEST)
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE entries SET request = '{\"prompt\": 3' WHERE idx = 0")
        db.commit()
    with Journal.open(path) as journal, pytest.raises(ba.JournalError, match="entry 0"):
        journal.get(0)


def test_empty_file_becomes_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    with Journal.open(path) as journal:
        journal.record_sending(0, REQUEST)
    assert reopened(path)[0].request == REQUEST


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "batch.sqlite"
    with pytest.raises(ba.JournalError, match="cannot open journal"):
        Journal.open(path)
    assert not (tmp_path / "no").exists()


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ba.JournalError, match=re.escape(str(tmp_path))):
        Journal.open(tmp_path)


def test_second_open_is_refused_until_closed(journal: Journal, path: Path) -> None:
    journal.record_sending(0, REQUEST)
    with pytest.raises(ba.JournalError, match="in use"):
        Journal.open(path)
    with pytest.raises(ba.JournalError, match="in use"):
        Journal.open(path, exclusive=False)
    journal.close()
    assert len(reopened(path)) == 1


def test_shared_opens(path: Path) -> None:
    with Journal.open(path, exclusive=False) as one, Journal.open(path, exclusive=False) as two:
        one.record_sending(0, REQUEST)
        assert two.get(0) == one.get(0)


# -- durability across SIGKILL --------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from banana_async.journal import Journal
    from banana_async.models import GenerationRequest, Task, TaskStatus

    journal = Journal.open(sys.argv[1])
    count = int(sys.argv[2])
    print("open", flush=True)
    for i in range(count):
        journal.record_sending(i, GenerationRequest(f"prompt {i}"))
        journal.record_created(i, Task(f"task-{i}", TaskStatus.QUEUED, "queued"))
        print(i, flush=True)
    time.sleep(120)  # blocks until killed, the journal still open
    """
)
CHILD_DEADLINE = 60.0


def read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.strip())
    lines.put(None)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize(("count", "kill_after"), [(20, 20), (5000, 50)])
def test_committed_entries_survive_sigkill(path: Path, count: int, kill_after: int) -> None:
    """Kill the writer once it printed ``kill_after`` lines: every printed entry is kept.

    With ``kill_after == count`` the child is blocked with its journal open;
    otherwise it is killed in the middle of writing.
    """
    printed: list[int] = []
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(count)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        reader = threading.Thread(target=read_lines, args=(child.stdout, lines), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + CHILD_DEADLINE
            assert lines.get(timeout=CHILD_DEADLINE) == "open"
            while len(printed) < kill_after:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                assert line is not None, "the child ended early"
                printed.append(int(line))
            if kill_after == count:
                # The journal is open in the child: a second run is refused.
                with pytest.raises(ba.JournalError, match="in use"):
                    Journal.open(path)
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=CHILD_DEADLINE) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=CHILD_DEADLINE)
            reader.join(timeout=CHILD_DEADLINE)
            assert child.stderr is not None
            errors = child.stderr.read()
        assert not errors, errors

    assert printed == list(range(kill_after))
    with Journal.open(path) as journal:
        entries = list(journal.entries())
        for i in printed:
            entry = journal.get(i)
            assert entry is not None, f"entry {i} was lost"
            assert entry.state is EntryState.CREATED
            assert entry.task_id == f"task-{i}"
            assert entry.request == ba.GenerationRequest(f"prompt {i}")
    # Anything written after the last printed line is a consistent prefix too.
    assert [e.index for e in entries] == list(range(len(entries)))
    assert all(e.state is EntryState.CREATED for e in entries[:-1])
    if kill_after == count:
        assert len(entries) == count
