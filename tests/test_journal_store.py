"""The journal package: its one transition table, and the async SQLite store."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import banana_async as ba
from banana_async.journal import (
    TRANSITIONS,
    EntryState,
    Journal,
    JournalEntry,
    JournalStore,
    ResumeStep,
    SQLiteStore,
    may_follow,
    resume_step,
    sources,
)
from banana_async.testing import FakeBananaServer

from .conftest import live_client

REQUEST = ba.GenerationRequest("a cat")


def queued(task_id: str) -> ba.Task:
    return ba.Task(task_id, ba.TaskStatus.QUEUED, "queued")


# -- the table --------------------------------------------------------------------


def test_every_state_has_a_row_and_leads_only_to_states() -> None:
    assert set(TRANSITIONS) == {None, *EntryState}
    for following in TRANSITIONS.values():
        assert following <= {None, *EntryState}


def test_resume_steps_agree_with_the_table() -> None:
    for state in (None, *EntryState):
        step = resume_step(state)
        # Creating again is allowed exactly where nothing can have been created.
        assert (step is ResumeStep.CREATE) == may_follow(state, EntryState.SENDING)
        # Only an unconfirmed create, or a failed task (a retry, on request),
        # may be forgotten and so sent again.
        forgettable = step is ResumeStep.UNCONFIRMED or state is EntryState.FAILED
        assert forgettable == may_follow(state, None)
    assert resume_step(EntryState.CREATED) is ResumeStep.POLL
    assert resume_step(EntryState.COMPLETED) is ResumeStep.REPORT
    assert resume_step(EntryState.FAILED) is ResumeStep.REPORT


def test_final_comes_from_the_table() -> None:
    finals = {state for state in EntryState if state.final}
    assert finals == {EntryState.COMPLETED, EntryState.FAILED, EntryState.UNCONFIRMED}


def test_sources_invert_the_table() -> None:
    assert sources(EntryState.SENDING) == {None, EntryState.ERROR}
    assert sources(EntryState.CREATED) == {EntryState.SENDING, EntryState.CREATED}
    assert sources(None) == {EntryState.SENDING, EntryState.UNCONFIRMED, EntryState.FAILED}


@pytest.mark.parametrize("state", [EntryState.COMPLETED, EntryState.FAILED])
def test_the_journal_refuses_what_the_table_refuses(path: Path, state: EntryState) -> None:
    with Journal.open(path) as journal:
        journal.record_sending(0, REQUEST)
        status = ba.TaskStatus.COMPLETED if state is EntryState.COMPLETED else ba.TaskStatus.FAILED
        journal.record_finished(0, ba.Task("t0", status, status.value))
        for after in (EntryState.SENDING, EntryState.CREATED, EntryState.ERROR):
            assert not may_follow(state, after)
        with pytest.raises(ValueError, match="state"):
            journal.record_created(0, queued("t0"))
        with pytest.raises(ValueError, match="state"):
            journal.record_sending(0, REQUEST)
        entry = journal.get(0)
    assert entry is not None
    assert entry.state is state


# -- the async store ------------------------------------------------------------------


async def test_store_records_and_reads_back(path: Path) -> None:
    store = await SQLiteStore.open(path)
    assert isinstance(store, JournalStore)
    try:
        assert await store.get(0) is None
        await store.record_sending(0, REQUEST)
        await store.record_created(0, queued("t0"))
        entry = await store.get(0)
        assert entry is not None
        assert entry.state is EntryState.CREATED
        assert entry.task_id == "t0"
        assert await store.request_matches(0, REQUEST)
    finally:
        await store.aclose()
    assert store.journal.closed  # opened by the store, closed by it
    with Journal.open(path) as journal:
        again = journal.get(0)
    assert again is not None
    assert again.state is EntryState.CREATED


async def test_one_refused_record_does_not_undo_its_group(path: Path) -> None:
    async with await SQLiteStore.open(path) as store:
        calls = [store.record_sending(i, REQUEST) for i in range(20)]
        # Refused by the table (nothing recorded for 99), in the same burst.
        calls.append(store.record_created(99, queued("t99")))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(r is None for r in results[:20])
        assert isinstance(results[20], ValueError)
        entries = [await store.get(i) for i in range(20)]
        assert await store.get(99) is None
    assert all(e is not None and e.state is EntryState.SENDING for e in entries)


async def test_a_full_disk_fails_each_record_alone(path: Path) -> None:
    journal = Journal.open(path)
    store = journal.store()
    try:
        journal.max_pages = journal.max_pages  # a no-op cap: writes still fit
        await store.record_sending(0, REQUEST)
        journal.max_pages = 1  # full from now on: new pages are refused
        big = ba.GenerationRequest("x" * 20_000)
        results = await asyncio.gather(
            *(store.record_sending(i, big) for i in range(1, 6)), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results), results
        assert [await store.get(i) for i in range(1, 6)] == [None] * 5
        entry = await store.get(0)
        assert entry is not None
        assert entry.state is EntryState.SENDING
    finally:
        await store.aclose()
        assert not journal.closed  # a store over a journal leaves it open
        journal.close()


async def test_a_cancelled_caller_learns_the_fate_of_its_record(path: Path) -> None:
    async with await SQLiteStore.open(path) as store:
        await store.record_sending(0, REQUEST)  # the thread runs, records group
        writers = [asyncio.create_task(store.record_sending(i, REQUEST)) for i in range(1, 50)]
        await asyncio.sleep(0)  # every record is on its way to the thread
        for writer in writers:
            writer.cancel()
        for writer in writers:
            with pytest.raises(asyncio.CancelledError):
                await writer
        # Cancelled after it was handed over: each record was still made,
        # and made before its caller went.
        entries = [store.journal.get(i) for i in range(1, 50)]
    assert all(e is not None and e.state is EntryState.SENDING for e in entries)


async def test_a_closed_store_refuses_calls(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.aclose()
    await store.aclose()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        await store.record_sending(0, REQUEST)


async def test_opening_a_locked_journal_raises_journal_error(path: Path) -> None:
    with Journal.open(path), pytest.raises(ba.JournalError, match="in use") as info:
        await SQLiteStore.open(path)
    assert info.value.path == str(path)
    assert not isinstance(info.value, ba.InvalidRequestError)


class _CountingStore:
    """A JournalStore of its own: counts its records and delegates to SQLite."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.records = 0
        self.closed = False

    @property
    def name(self) -> str:
        return self.inner.name

    async def bind_provider(self, dialect: str, create_base_url: str, query_base_url: str) -> None:
        await self.inner.bind_provider(dialect, create_base_url, query_base_url)

    async def get(self, index: int) -> JournalEntry | None:
        return await self.inner.get(index)

    async def request_matches(
        self, index: int, request: ba.GenerationRequest | None, *, raw_input: str | None = None
    ) -> bool:
        return await self.inner.request_matches(index, request, raw_input=raw_input)

    async def record_sending(self, index: int, request: ba.GenerationRequest) -> None:
        self.records += 1
        await self.inner.record_sending(index, request)

    async def record_created(self, index: int, task: ba.Task) -> None:
        self.records += 1
        await self.inner.record_created(index, task)

    async def record_finished(self, index: int, task: ba.Task) -> None:
        self.records += 1
        await self.inner.record_finished(index, task)

    async def record_error(
        self,
        index: int,
        request: ba.GenerationRequest | None,
        error: BaseException,
        *,
        raw_input: str | None = None,
    ) -> None:
        self.records += 1
        await self.inner.record_error(index, request, error, raw_input=raw_input)

    async def record_unconfirmed(
        self,
        index: int,
        request: ba.GenerationRequest,
        error: BaseException,
        *,
        task_id: str | None = None,
    ) -> None:
        self.records += 1
        await self.inner.record_unconfirmed(index, request, error, task_id=task_id)

    async def record_download(self, index: int, path: str | os.PathLike[str]) -> None:
        self.records += 1
        await self.inner.record_download(index, path)

    async def note_error(self, index: int, error: BaseException) -> None:
        self.records += 1
        await self.inner.note_error(index, error)

    async def mark_resend(self, index: int) -> None:
        self.records += 1
        await self.inner.mark_resend(index)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


async def test_a_batch_records_through_any_store(live: FakeBananaServer, path: Path) -> None:
    store = _CountingStore(await SQLiteStore.open(path))
    assert isinstance(store, JournalStore)
    try:
        async with live_client(live) as client:
            first = [o async for o in client.generate_many(["a", "b", "c"], journal=store)]
            assert all(o.ok and not o.from_journal for o in first)
            assert store.records == 9  # sending, created, finished for each
            assert not store.closed  # the batch never closes a store it was given
            again = [o async for o in client.generate_many(["a", "b", "c"], journal=store)]
        assert all(o.ok and o.from_journal for o in again)
        assert store.records == 9
    finally:
        await store.aclose()


class _SlowCreatedStore(_CountingStore):
    """Records ``created`` slowly, and notes when each index's records were made."""

    def __init__(self, inner: SQLiteStore, live: FakeBananaServer) -> None:
        super().__init__(inner)
        self.live = live
        self.made: dict[int, list[str]] = {}
        self.queries_while_recording: list[int] = []

    async def record_created(self, index: int, task: ba.Task) -> None:
        before = self.live.count("query")
        await asyncio.sleep(0.3)
        await super().record_created(index, task)
        self.queries_while_recording.append(self.live.count("query") - before)
        self.made.setdefault(index, []).append("created")

    async def record_finished(self, index: int, task: ba.Task) -> None:
        await super().record_finished(index, task)
        self.made.setdefault(index, []).append("finished")


async def test_polling_starts_while_the_created_record_is_made_but_outcomes_wait(
    live: FakeBananaServer, path: Path
) -> None:
    store = _SlowCreatedStore(await SQLiteStore.open(path), live)
    try:
        async with live_client(live) as client:
            async for outcome in client.generate_many(["a", "b", "c"], journal=store):
                # Each outcome comes once both its records are made, in order.
                assert outcome.ok
                assert store.made[outcome.index] == ["created", "finished"]
        # The polls did not wait for the slow record of the task they poll.
        assert len(store.queries_while_recording) == 3
        assert all(queries > 0 for queries in store.queries_while_recording)
    finally:
        await store.aclose()
    with ba.Journal.open(path) as reopened:
        assert {e.state for e in reopened.entries()} == {ba.EntryState.COMPLETED}


# -- SIGKILL in the middle of group commits ----------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from banana_async.journal import SQLiteStore
    from banana_async.models import GenerationRequest, Task, TaskStatus

    async def one(store, i):
        await store.record_sending(i, GenerationRequest(f"prompt {i}"))
        await store.record_created(i, Task(f"task-{i}", TaskStatus.QUEUED, "queued"))
        # Acknowledged: the record_created above is committed.
        print(i, flush=True)

    async def main(path, count, concurrency):
        store = await SQLiteStore.open(path)
        print("open", flush=True)
        gate = asyncio.Semaphore(concurrency)

        async def guarded(i):
            async with gate:
                await one(store, i)

        await asyncio.gather(*(guarded(i) for i in range(count)))
        await asyncio.sleep(120)  # not reached: killed while writing

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
async def test_sigkill_mid_group_commit_loses_nothing_acknowledged(path: Path) -> None:
    """Kill a writer with 200 records in flight at every moment: all acknowledged survive."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        "100000",
        "200",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    acknowledged: list[int] = []
    try:
        assert child.stdout is not None
        assert (await child.stdout.readline()).strip() == b"open"
        while len(acknowledged) < 3000:
            line = await child.stdout.readline()
            assert line, "the child ended early"
            acknowledged.append(int(line))
        child.send_signal(signal.SIGKILL)
        # Lines printed before the kill landed are acknowledged too.
        rest, errors = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not errors, errors
    acknowledged += [int(line) for line in rest.split()]
    with Journal.open(path) as journal:
        entries = {e.index: e for e in journal.entries()}
    for i in acknowledged:
        entry = entries.get(i)
        assert entry is not None, f"entry {i} was acknowledged and lost"
        assert entry.state is EntryState.CREATED
        assert entry.task_id == f"task-{i}"
    # Records were still being made at the kill: some were not acknowledged,
    # and whatever is there is whole (SENDING or CREATED, never torn).
    assert len(entries) >= len(acknowledged)
    assert {e.state for e in entries.values()} <= {EntryState.SENDING, EntryState.CREATED}


def test_store_protocol_has_what_a_batch_calls() -> None:
    wanted = {
        "name",
        "bind_provider",
        "get",
        "request_matches",
        "record_sending",
        "record_created",
        "record_finished",
        "record_error",
        "record_unconfirmed",
        "record_download",
        "note_error",
        "mark_resend",
        "aclose",
    }
    members: set[Any] = {name for name in dir(JournalStore) if not name.startswith("_")}
    assert wanted <= members
