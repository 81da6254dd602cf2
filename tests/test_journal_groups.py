"""Group commit with one statement for many records: the same ends as one record at a time.

The SQLite store writes the records of one group that every task makes
(``record_sending`` of new entries; ``record_created`` and ``record_finished``)
with one statement (without a transaction around it when nothing else is in
the group), and runs alone only those the statement did not write.
These tests hand groups to the journal's group runner directly, so that the
grouping is known, and compare every entry with what the same records made one
by one leave behind (real files, real SQLite).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import banana_async as ba
from banana_async.journal import EntryState, Journal, JournalEntry, SQLiteStore
from banana_async.journal import sqlite as journal_sqlite

REQUEST = ba.GenerationRequest("a cat")

pytestmark = pytest.mark.skipif(
    not journal_sqlite._STATEMENTS_FOR_MANY, reason="this SQLite runs every record alone"
)


def task(task_id: str, status: ba.TaskStatus = ba.TaskStatus.QUEUED) -> ba.Task:
    error = "no" if status is ba.TaskStatus.FAILED else None
    url = "https://images.example/x.png" if status is ba.TaskStatus.COMPLETED else None
    return ba.Task(task_id, status, status.value, image_url=url, error=error)


def outcome(result: tuple[bool, Any]) -> str:
    ok, value = result
    return "ok" if ok else type(value).__name__


def alone(journal: Journal, steps: list[Any]) -> list[str]:
    """Run each step in a group of its own, as the store did before groups shared statements."""
    return [outcome(journal._run_group([step])[0]) for step in steps]


def together(journal: Journal, steps: list[Any]) -> list[str]:
    return [outcome(result) for result in journal._run_group(steps)]


def shown(entries: list[JournalEntry]) -> list[tuple[Any, ...]]:
    """Everything but the time of writing."""
    return [
        (e.index, e.state, e.request, e.raw_input, e.task_id, e.task, e.error, e.error_type, e.path)
        for e in entries
    ]


def both(tmp_path: Path, prepare: Any, make_steps: Any) -> tuple[list[str], list[str]]:
    """Prepare two journals alike, run the steps alone in one and together in the other.

    Returns the outcomes of each, after checking that both journals hold the same entries.
    """
    outcomes = []
    entries = []
    for name, run in (("alone", alone), ("together", together)):
        (tmp_path / name).mkdir(exist_ok=True)
        for old in (tmp_path / name).iterdir():
            old.unlink()
        with Journal.open(tmp_path / name / "j.sqlite") as journal:
            prepare(journal)
            outcomes.append(run(journal, make_steps(journal)))
            entries.append(shown(list(journal.entries())))
    assert entries[0] == entries[1]
    return outcomes[0], outcomes[1]


def test_a_fresh_batch_group_writes_every_kind(tmp_path: Path) -> None:
    def steps(journal: Journal) -> list[Any]:
        return [journal._op_record_sending(i, ba.GenerationRequest(f"cat {i}")) for i in range(60)]

    first, second = both(tmp_path, lambda journal: None, steps)
    assert first == second == ["ok"] * 60

    def prepare(journal: Journal) -> None:
        for i in range(60):
            journal.record_sending(i, REQUEST)
        for i in range(30, 60):
            journal.record_created(i, task(f"t{i}"))

    def mixed(journal: Journal) -> list[Any]:
        # More than one statement's rows: written in one transaction.
        made: list[Any] = [journal._op_record_created(i, task(f"t{i}")) for i in range(30)]
        made += [
            journal._op_record_finished(i, task(f"t{i}", ba.TaskStatus.COMPLETED))
            for i in range(30, 45)
        ]
        made += [
            journal._op_record_finished(i, task(f"t{i}", ba.TaskStatus.FAILED))
            for i in range(45, 60)
        ]
        made += [journal._op_record_sending(i, REQUEST) for i in range(60, 200)]
        return made

    first, second = both(tmp_path, prepare, mixed)
    assert first == second == ["ok"] * 200

    def one_statement(journal: Journal) -> list[Any]:
        # Every kind in one statement, with no transaction around it.
        made = mixed(journal)[:100]
        assert journal_sqlite._one_statement(made)
        return made

    first, second = both(tmp_path, prepare, one_statement)
    assert first == second == ["ok"] * 100


def test_records_the_table_refuses_fail_alone_in_a_shared_statement(tmp_path: Path) -> None:
    def prepare(journal: Journal) -> None:
        for i in range(10):
            journal.record_sending(i, REQUEST)
        journal.record_created(3, task("t3"))
        journal.record_finished(4, task("t4", ba.TaskStatus.COMPLETED))
        journal.record_error(5, REQUEST, RuntimeError("refused"))

    def steps(journal: Journal) -> list[Any]:
        return [
            journal._op_record_created(0, task("t0")),
            journal._op_record_created(1, task("t1")),
            journal._op_record_created(3, task("another")),  # holds t3
            journal._op_record_created(4, task("t4")),  # COMPLETED: no way back
            journal._op_record_created(5, task("t5")),  # ERROR: nothing was created
            journal._op_record_created(77, task("t77")),  # nothing recorded
            journal._op_record_finished(2, task("t2", ba.TaskStatus.FAILED)),
            journal._op_record_finished(4, task("t4", ba.TaskStatus.FAILED)),  # was completed
            journal._op_record_finished(6, task("t6", ba.TaskStatus.COMPLETED)),
        ]

    first, second = both(tmp_path, prepare, steps)
    expected = ["ok", "ok", "ValueError", "ValueError", "ValueError", "ValueError"]
    expected += ["ok", "ValueError", "ok"]
    assert first == second == expected


def test_sending_over_existing_entries_follows_the_table(tmp_path: Path) -> None:
    # Opened shared, the journal cannot know which entries are new: the
    # group looks them up, and an ERROR entry may be sent again.
    def prepare(journal: Journal) -> None:
        journal.record_sending(0, REQUEST)
        journal.record_error(1, REQUEST, RuntimeError("refused"))
        journal.record_sending(2, REQUEST)
        journal.record_created(2, task("t2"))

    def steps(journal: Journal) -> list[Any]:
        return [journal._op_record_sending(i, ba.GenerationRequest(f"dog {i}")) for i in range(8)]

    outcomes = []
    entries = []
    for name, run in (("alone", alone), ("together", together)):
        with Journal.open(tmp_path / f"{name}.sqlite") as journal:
            prepare(journal)
        with Journal.open(tmp_path / f"{name}.sqlite", exclusive=False) as journal:
            outcomes.append(run(journal, steps(journal)))
            entries.append(shown(list(journal.entries())))
    assert entries[0] == entries[1]
    assert outcomes[0] == outcomes[1] == ["ValueError", "ok", "ValueError"] + ["ok"] * 5
    one = next(e for e in entries[1] if e[0] == 1)
    assert one[1] is EntryState.SENDING
    assert one[6] is None  # the ERROR entry's error went with it


def test_a_task_id_with_a_backslash_is_written_by_its_step_alone(tmp_path: Path) -> None:
    # A stored id with a backslash cannot be compared in SQL (it may be an
    # escape): the shared statement leaves it, and the step writes it.
    odd = "t\\1"

    def prepare(journal: Journal) -> None:
        for i in range(3):
            journal.record_sending(i, REQUEST)
        journal.record_created(0, task(odd))

    def steps(journal: Journal) -> list[Any]:
        return [
            journal._op_record_created(0, task(odd, ba.TaskStatus.PROCESSING)),
            journal._op_record_created(1, task("t1")),
            journal._op_record_finished(2, task("t2", ba.TaskStatus.COMPLETED)),
        ]

    first, second = both(tmp_path, prepare, steps)
    assert first == second == ["ok", "ok", "ok"]
    with Journal.open(tmp_path / "together" / "j.sqlite") as journal:
        entry = journal.get(0)
    assert entry is not None
    assert entry.task_id == odd
    assert entry.task is not None
    assert entry.task.status is ba.TaskStatus.PROCESSING


def test_two_records_for_one_entry_in_a_group_keep_their_order(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite") as journal:
        steps: list[Any] = [
            journal._op_record_sending(0, REQUEST),
            journal._op_record_sending(1, REQUEST),
            journal._op_record_sending(0, REQUEST),  # second create of input 0: refused
            journal._op_record_created(0, task("t0")),
            journal._op_record_created(1, task("t1")),
            journal._op_get(0),
            journal._op_record_finished(0, task("t0", ba.TaskStatus.COMPLETED)),
        ]
        results = journal._run_group(steps)
        assert [outcome(r) for r in results] == ["ok", "ok", "ValueError", "ok", "ok", "ok", "ok"]
        read = results[5][1]
        assert isinstance(read, JournalEntry)
        assert read.state is EntryState.CREATED  # read after the records before it
        final = journal.get(0)
    assert final is not None
    assert final.state is EntryState.COMPLETED


def test_a_fresh_journal_is_made_in_the_write_ahead_log(tmp_path: Path) -> None:
    # A new file is made in WAL mode from its first write (no fsyncs of the
    # rollback mode before a batch can start), and then commits as usual.
    with Journal.open(tmp_path / "new.sqlite") as journal:
        connection = journal._connection
        assert connection is not None
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        journal.record_sending(0, REQUEST)
    with Journal.open(tmp_path / "new.sqlite") as journal:
        entry = journal.get(0)
    assert entry is not None
    assert entry.state is EntryState.SENDING


def test_a_full_disk_in_a_shared_statement_fails_each_record_alone(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite") as journal:
        for i in range(6):
            journal.record_sending(i, REQUEST)
        journal.max_pages = 1  # full from now on
        big = "x" * 20_000
        steps = [journal._op_record_created(i, task(f"{big}{i}")) for i in range(6)]
        results = journal._run_group(steps)
        journal.max_pages = 1_000_000
        assert all(not ok and "full" in str(error) for ok, error in results), results
        assert {e.state for e in journal.entries()} == {EntryState.SENDING}


async def test_a_store_under_a_burst_records_exactly_once(tmp_path: Path) -> None:
    """Many callers at once, some for the same input: exactly one create of each input wins."""
    path = tmp_path / "j.sqlite"
    async with await SQLiteStore.open(path) as store:
        sending = await asyncio.gather(
            *(store.record_sending(i % 150, REQUEST) for i in range(300)), return_exceptions=True
        )
        assert sum(r is None for r in sending) == 150
        assert all(isinstance(r, ValueError) for r in sending if r is not None)
        await asyncio.gather(*(store.record_created(i, task(f"t{i}")) for i in range(150)))
        done = ba.TaskStatus.COMPLETED
        await asyncio.gather(*(store.record_finished(i, task(f"t{i}", done)) for i in range(150)))
    with Journal.open(path) as journal:
        entries = list(journal.entries())
    assert [e.index for e in entries] == list(range(150))
    assert {e.state for e in entries} == {EntryState.COMPLETED}
    assert [e.task_id for e in entries] == [f"t{i}" for i in range(150)]
