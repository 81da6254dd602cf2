"""A Hypothesis state machine for the journal: random records, crashes, then resumes.

A real SQLite journal in a temporary folder records a batch of a few inputs
while the machine plays the batch's part at random: a create about to be
sent, the task it created (made for real at the fake provider), newer
snapshots of it, its end, refusals, unconfirmed creates, resends, notes and
downloads, in any order, legal or not. Now and then the process "crashes":
the journal's files are copied as they are on disk while it is open (what a
SIGKILL would leave), and the machine goes on from the copy; or the journal
is closed and opened again. At any point a resume runs the real batch,
``generate_many(journal=...)``, against the fake provider. What must hold:

- every record the table (``journal.TRANSITIONS``) forbids raises
  ValueError and changes nothing; every other one is there after any crash;
- a resume yields exactly one outcome per input;
- a resume never creates a task for an input whose task is recorded
  (created, completed, or failed unless ``retry_failed``), nor for an
  unconfirmed create unless ``resend_unconfirmed``; it creates exactly one
  for each input with nothing created (counted at the provider);
- its outcomes are the recorded tasks, and the journal afterwards says what
  the outcomes say.

Example counts follow the Hypothesis profile (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import attrs
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import banana_async as ba
from banana_async.journal import EntryState, JournalEntry, SQLiteStore, may_follow
from banana_async.testing import FakeBananaServer
from tests.conftest import API_KEY

_T = TypeVar("_T")

INPUTS = 4
PROMPTS = [f"input {index}: a cat on a windowsill" for index in range(INPUTS)]
REQUESTS = [ba.GenerationRequest(prompt) for prompt in PROMPTS]
indices = st.integers(0, INPUTS - 1)


def _copy_journal(source: Path, target: Path) -> None:
    """Copy a journal's files as they are on disk (an open one: what a kill leaves)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = Path(f"{source}{suffix}")
        if part.exists():
            shutil.copyfile(part, f"{target}{suffix}")


@attrs.frozen
class Entry:
    """What the machine knows an input's entry holds."""

    state: EntryState | None = None
    task_id: str | None = None


class JournalMachine(RuleBasedStateMachine):
    """Play a batch's records at random against a real journal, crash it, resume it."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="banana-fuzz-journal-"))
        self.loop = asyncio.new_event_loop()
        # The event loop's clock, readable between steps too (no loop runs then).
        self.server = FakeBananaServer(api_key=API_KEY, duration=None, clock=time.monotonic)
        self.loop.run_until_complete(self.server.start())
        self.client = ba.BananaClient(
            API_KEY, base_url=self.server.url, timeout=10, poll_interval=0.01, rate_limit_url=""
        )
        self.crashes = 0
        self.path = self._fresh_path()
        self.store: SQLiteStore | None = None
        self.model = [Entry() for _ in range(INPUTS)]
        self.loop.run_until_complete(self._start())

    def _fresh_path(self) -> Path:
        folder = self.folder / f"run-{self.crashes}"
        folder.mkdir()
        return folder / "batch.sqlite"

    async def _start(self) -> None:
        await self.client.__aenter__()
        self.store = await SQLiteStore.open(self.path)
        client = self.client
        await self.store.bind_provider(
            client.dialect.name, client.create_base_url, client.query_base_url
        )

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self._stop())
        finally:
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    async def _stop(self) -> None:
        if self.store is not None:
            await self.store.aclose()
        await self.client.aclose()
        await self.server.close()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run_until_complete(coroutine)

    @property
    def _store(self) -> SQLiteStore:
        assert self.store is not None
        return self.store

    # -- the provider's side -----------------------------------------------------------

    def _create_at_provider(self, index: int) -> ba.Task:
        return self._run(self.client.create(PROMPTS[index]))

    def _end_at_provider(self, task_id: str, ok: bool) -> ba.Task:
        """End a task at the provider (if it runs), and return it as a query sees it."""
        fake = self.server.tasks[task_id]
        if not fake.is_terminal(self.server.now()):
            if ok:
                self.server.finish(task_id)
            else:
                self.server.fail(task_id, "it broke")
        return self._run(self.client.get(task_id))

    # -- records -------------------------------------------------------------------------

    def _attempt(self, index: int, after: EntryState | None, record: Any, entry: Entry) -> None:
        """Make ``record``; the table decides whether it must succeed (then ``entry`` holds)."""
        allowed = may_follow(self.model[index].state, after)
        try:
            self._run(record)
        except ValueError:
            assert not allowed, f"refused {after} after {self.model[index]}"
            event("a record the table forbids was refused")
            return
        assert allowed, f"took {after} after {self.model[index]}"
        self.model[index] = entry

    @rule(index=indices)
    def sending(self, index: int) -> None:
        """A create is about to be sent."""
        self._attempt(
            index,
            EntryState.SENDING,
            self._store.record_sending(index, REQUESTS[index]),
            Entry(EntryState.SENDING),
        )

    @rule(index=indices)
    def created(self, index: int) -> None:
        """The create answered with a new task, or a poll saw the task still running."""
        now = self.model[index]
        if now.state is EntryState.SENDING:
            task = self._create_at_provider(index)
        elif now.state is EntryState.CREATED and now.task_id is not None:
            task = self._run(self.client.get(now.task_id))
        else:  # a record the table forbids: no task is made for it
            task = ba.Task(id=f"never-made-{index}", status=ba.TaskStatus.QUEUED)
        self._attempt(
            index,
            EntryState.CREATED,
            self._store.record_created(index, task),
            Entry(EntryState.CREATED, task.id),
        )

    @rule(index=indices)
    def sent_and_created(self, index: int) -> None:
        """A whole create, as a batch makes it: recorded, sent, its task recorded."""
        self.sending(index)
        if self.model[index].state is EntryState.SENDING:
            self.created(index)

    @rule(index=indices, ok=st.booleans())
    def created_and_ended(self, index: int, ok: bool) -> None:
        """A whole task, as a batch sees it: recorded, sent, created, polled to its end."""
        self.sent_and_created(index)
        if self.model[index].state is EntryState.CREATED:
            self.finished(index, ok)

    @rule(index=indices, made=st.booleans())
    def sent_and_lost(self, index: int, made: bool) -> None:
        """A create recorded and sent, whose answer never came."""
        self.sending(index)
        if self.model[index].state is EntryState.SENDING:
            self.unconfirmed(index, made)

    @rule(index=indices, ok=st.booleans())
    def finished(self, index: int, ok: bool) -> None:
        """The task ended (seen by a poll, or at once in the create's answer)."""
        now = self.model[index]
        after = EntryState.COMPLETED if ok else EntryState.FAILED
        if now.state is EntryState.SENDING:
            task = self._end_at_provider(self._create_at_provider(index).id, ok)
        elif now.task_id is not None and may_follow(now.state, after):
            task = self._end_at_provider(now.task_id, ok)
            after = EntryState.COMPLETED if task.ok else EntryState.FAILED
        else:
            status = ba.TaskStatus.COMPLETED if ok else ba.TaskStatus.FAILED
            task = ba.Task(
                id=now.task_id or f"never-made-{index}",
                status=status,
                image_url="https://img.example/x.png" if ok else None,
                error=None if ok else "it broke",
            )
        self._attempt(index, after, self._store.record_finished(index, task), Entry(after, task.id))

    @rule(index=indices)
    def refused(self, index: int) -> None:
        """The create was refused or never sent: certainly nothing was created."""
        error = ba.BadRequestError("HTTP 400: refused", status_code=400, body="")
        self._attempt(
            index,
            EntryState.ERROR,
            self._store.record_error(index, REQUESTS[index], error),
            Entry(EntryState.ERROR),
        )

    @rule(index=indices, made=st.booleans())
    def unconfirmed(self, index: int, made: bool) -> None:
        """The create failed after it was sent; the provider may (``made``) have a task."""
        task_id = None
        if made and self.model[index].state is EntryState.SENDING:
            task_id = self._create_at_provider(index).id
        error = ba.ServerError("HTTP 502: bad gateway", status_code=502, body="")
        self._attempt(
            index,
            EntryState.UNCONFIRMED,
            self._store.record_unconfirmed(index, REQUESTS[index], error, task_id=task_id),
            Entry(EntryState.UNCONFIRMED, task_id),
        )

    @rule(index=indices)
    def resend(self, index: int) -> None:
        """The user asked to send it again: the entry is forgotten."""
        self._attempt(index, None, self._store.mark_resend(index), Entry())

    @rule(index=indices)
    def noted(self, index: int) -> None:
        """An error kept on the entry (a wait that timed out): no transition."""
        before = self.model[index]
        try:
            self._run(self._store.note_error(index, ba.APITimeoutError("slow")))
        except ValueError:
            assert before.state is None
            return
        assert before.state is not None

    @rule(index=indices)
    def downloaded(self, index: int) -> None:
        """The image of a completed task was saved: no transition."""
        before = self.model[index]
        try:
            self._run(self._store.record_download(index, self.folder / f"image-{index}.png"))
        except ValueError:
            assert before.state is not EntryState.COMPLETED
            return
        assert before.state is EntryState.COMPLETED

    # -- crashes -------------------------------------------------------------------------

    @rule()
    def crash(self) -> None:
        """The process is killed: what is on disk now is all a new run finds."""
        old = self.path
        self.crashes += 1
        self.path = self._fresh_path()
        _copy_journal(old, self.path)
        # The dead process's journal goes away without a word more written to the copy.
        self._run(self._store.aclose())
        self.store = self._run(SQLiteStore.open(self.path))
        event("crashed")

    @rule()
    def reopen(self) -> None:
        """The batch stopped cleanly and is started again."""
        self._run(self._store.aclose())
        self.store = self._run(SQLiteStore.open(self.path))

    # -- resumes -------------------------------------------------------------------------

    @rule(resend_unconfirmed=st.booleans(), retry_failed=st.booleans())
    def resume(self, resend_unconfirmed: bool, retry_failed: bool) -> None:
        """Run the batch on the journal, as a user resuming it would."""
        before = list(self.model)
        for entry in before:
            event(f"resumed an entry {'with nothing' if entry.state is None else entry.state}")
        # Every task the provider holds ends now, and new ones at once.
        self._finish_all()
        self.server.duration = 0.0
        creates = Counter(str(task.body["prompt"]) for task in self.server.tasks.values())
        # The batch opens the file itself, as a user's run does.
        self._run(self._store.aclose())
        self.store = None
        try:
            outcomes: list[ba.Outcome] = self._run(
                self._batch(resend_unconfirmed=resend_unconfirmed, retry_failed=retry_failed)
            )
        finally:
            self.server.duration = None
            self.store = self._run(SQLiteStore.open(self.path))
        now = Counter(str(task.body["prompt"]) for task in self.server.tasks.values())
        made = {index: now[PROMPTS[index]] - creates[PROMPTS[index]] for index in range(INPUTS)}

        assert sorted(outcome.index for outcome in outcomes) == list(range(INPUTS))
        for outcome in outcomes:
            self._check_outcome(
                outcome,
                before[outcome.index],
                made[outcome.index],
                resend_unconfirmed=resend_unconfirmed,
                retry_failed=retry_failed,
            )
        recorded = self._run(self._entries())
        for outcome, found in zip(sorted(outcomes, key=lambda o: o.index), recorded, strict=True):
            self._check_recorded(outcome, found)
            self.model[outcome.index] = Entry(
                None if found is None else found.state, None if found is None else found.task_id
            )
        event(f"a resume created {sum(made.values())} of {INPUTS}")

    @rule(
        kill_at=st.integers(1, INPUTS),
        resend_unconfirmed=st.booleans(),
        retry_failed=st.booleans(),
    )
    def killed_during_resume(
        self, kill_at: int, resend_unconfirmed: bool, retry_failed: bool
    ) -> None:
        """The process is killed in a resumed batch, as a create reaches the provider.

        The journal is copied as the ``kill_at``-th create arrives, between
        two commits (what SIGKILL leaves on disk), and the next run starts
        from the copy. No task created by then may be missing from it, but
        for the creates in flight (``sending``, or unconfirmed).
        """
        self._finish_all()
        known = set(self.server.tasks)
        store = self._store
        old = self.path
        self.crashes += 1
        copy = self._fresh_path()
        arrived = 0

        def at_create(body: dict[str, Any]) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == kill_at:
                # Between two commits of the store's thread, as a kill finds the file.
                with store.journal._lock:
                    _copy_journal(old, copy)

        self.server.script_for = at_create
        self.server.duration = 0.0
        try:
            self._run(
                self._batch(
                    resend_unconfirmed=resend_unconfirmed,
                    retry_failed=retry_failed,
                    journal=store,
                )
            )
        finally:
            self.server.script_for = None
            self.server.duration = None
        if arrived < kill_at:  # fewer creates than that: killed at the end
            with store.journal._lock:
                _copy_journal(old, copy)
        self._run(store.aclose())
        self.path = copy
        self.store = self._run(SQLiteStore.open(copy))
        found = {entry.index: entry for entry in self._store.journal.entries()}
        created = [task for task_id, task in self.server.tasks.items() if task_id not in known]
        for task in created[:kill_at]:  # by the kill (the last one perhaps not even sent)
            index = PROMPTS.index(str(task.body["prompt"]))
            entry = found.get(index)
            assert entry is not None, (task.id, index)
            in_flight = entry.state in (EntryState.SENDING, EntryState.UNCONFIRMED)
            assert entry.task_id == task.id or in_flight, (task.id, entry)
        self.model = [
            Entry() if index not in found else Entry(found[index].state, found[index].task_id)
            for index in range(INPUTS)
        ]
        event(f"killed at create {kill_at} of {arrived}")

    def _finish_all(self) -> None:
        """End every task the provider holds: a resume then only waits on loopback."""
        for task_id, fake in self.server.tasks.items():
            if not fake.is_terminal(self.server.now()):
                self.server.finish(task_id)

    async def _batch(
        self,
        *,
        resend_unconfirmed: bool,
        retry_failed: bool,
        journal: Path | SQLiteStore | None = None,
    ) -> list[ba.Outcome]:
        batch = self.client.generate_many(
            PROMPTS,
            journal=self.path if journal is None else journal,
            timeout=30,
            poll_interval=0.01,
            resend_unconfirmed=resend_unconfirmed,
            retry_failed=retry_failed,
        )
        return [outcome async for outcome in batch]

    def _check_outcome(
        self,
        outcome: ba.Outcome,
        before: Entry,
        made: int,
        *,
        resend_unconfirmed: bool,
        retry_failed: bool,
    ) -> None:
        state = before.state
        if state in (None, EntryState.ERROR):
            assert made == 1, (outcome, before)  # nothing was created: created once now
            assert outcome.ok, outcome
        elif state in (EntryState.SENDING, EntryState.UNCONFIRMED):
            if resend_unconfirmed:
                assert made == 1, (outcome, before)
                assert outcome.ok, outcome
            else:
                assert made == 0, (outcome, before)
                assert isinstance(outcome.error, ba.UnconfirmedCreateError), outcome
        elif state is EntryState.FAILED and retry_failed:
            assert made == 1, (outcome, before)
            assert outcome.ok, outcome
            assert outcome.task is not None
            assert outcome.task.id != before.task_id
        else:  # a recorded task: never created again, reported as it is
            assert made == 0, (outcome, before)
            assert outcome.task is not None
            assert outcome.task.id == before.task_id, (outcome, before)
            if state is EntryState.CREATED:
                provider = self.server.tasks[outcome.task.id]
                assert outcome.ok == (provider.outcome == "complete"), outcome
            else:
                assert outcome.from_journal, outcome
                assert outcome.ok == (state is EntryState.COMPLETED), outcome

    @staticmethod
    def _check_recorded(outcome: ba.Outcome, entry: JournalEntry | None) -> None:
        """The journal says what the outcome says."""
        assert entry is not None, outcome
        if outcome.ok:
            assert outcome.task is not None
            assert entry.state is EntryState.COMPLETED, (outcome, entry)
            assert entry.task_id == outcome.task.id
        elif isinstance(outcome.error, ba.UnconfirmedCreateError):
            assert entry.state in (EntryState.SENDING, EntryState.UNCONFIRMED), (outcome, entry)
        else:
            assert outcome.task is not None, outcome
            assert entry.state is EntryState.FAILED, (outcome, entry)
            assert entry.task_id == outcome.task.id

    # -- what must hold after every step ------------------------------------------------------

    async def _entries(self) -> list[JournalEntry | None]:
        return [await self._store.get(index) for index in range(INPUTS)]

    @invariant()
    def journal_holds_every_record_made(self) -> None:
        if self.store is None:
            return
        # Read through the store's own journal, synchronously: each call of
        # the store waits out its group-commit window, about 10 ms.
        found = {entry.index: entry for entry in self._store.journal.entries()}
        for index, expected in enumerate(self.model):
            entry = found.get(index)
            seen = Entry() if entry is None else Entry(entry.state, entry.task_id)
            assert seen == expected, (index, seen, expected)


# Each record waits out the store's group-commit window (about 10 ms), and a
# resume runs a whole batch: few examples in the regular suite.
JournalMachine.TestCase.settings = settings(
    max_examples=max(10, settings().max_examples // 8),
    stateful_step_count=settings().stateful_step_count // 2,
)
TestJournal = JournalMachine.TestCase
