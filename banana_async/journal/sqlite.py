"""The embedded journal: one SQLite file, written from a thread of its own.

The provider bills every task it creates and offers no idempotency key, so a
batch that is stopped and run again must never create a task twice. The
journal makes that possible by recording, for each input of the batch:

1. :attr:`EntryState.SENDING` just *before* the create request is sent;
2. :attr:`EntryState.CREATED` with the task id as soon as the create answers;
3. :attr:`EntryState.COMPLETED` or :attr:`EntryState.FAILED` once the task ends,
   then the path of the downloaded image.

Inputs that fail with nothing created end as :attr:`EntryState.ERROR` (a
resumed run tries them again, which cannot bill twice); creates
that failed in a way that may have created a task end as
:attr:`EntryState.UNCONFIRMED`. An entry still ``SENDING`` when the journal is
read again belongs to a create whose fate is unknown: it is unconfirmed too.
Which state may follow which is :data:`~banana_async.journal.TRANSITIONS`.

Two faces share one file and one connection:

- :class:`~banana_async.Journal`, synchronous: open, inspect, and record by hand. Each
  method runs one short transaction and commits before it returns.
- :class:`~banana_async.journal.SQLiteStore`, the :class:`~banana_async.journal.JournalStore` a
  batch uses: every call runs on one worker thread, so the event loop never
  waits on the disk, and the records that arrive while a commit is under way
  go into the next one together (group commit). Each call returns only once
  its own record is committed.

The file uses SQLite's write-ahead log with ``synchronous=NORMAL``: a commit
is a ``write()`` into the log, which survives the process being killed (even
by ``SIGKILL``), though not necessarily a power cut or an operating-system
crash.

::

    with Journal.open("batch.sqlite") as journal:
        journal.record_sending(0, request)
        task = await client.create(request)
        journal.record_created(0, task)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

import attrs

from banana_async._checks import error_message as error_text  # message, or the class name
from banana_async.errors import JournalError
from banana_async.journal._entries import (
    JournalEntry,
    JournalProvider,
    canonical_request,
    check_index,
    dumps_task,
    entry_from_row,
    storable,
)
from banana_async.journal.states import EntryState, may_follow, sources
from banana_async.models import GenerationRequest, Task, TaskStatus

__all__ = ["SCHEMA_VERSION", "Journal", "SQLiteStore"]

_T = TypeVar("_T")

# Still 1 with the "provider" key of meta (Journal.bind_provider): meta is a
# key/value table, so a new key needs no new layout. Older versions of this
# module open such a journal and ignore the key; this one opens journals
# without it and records it at the first bind.
SCHEMA_VERSION: Final = 1
"""The version of the file layout this module reads and writes."""

# The text stored in meta; it named the module when the journal was one module.
_APPLICATION: Final = "banana_async.journal"

# Waiting longer for a lock is pointless: an open journal keeps its lock until
# it is closed (see ``exclusive`` in :meth:`~banana_async.Journal.open`).
_BUSY_TIMEOUT: Final = 1.0

# Longest pause between two attempts of Journal.open on a busy file. Random,
# so that openers that collided do not collide again in step.
_RETRY_PAUSE: Final = 0.02

# Most records in one group commit: a bound on how long one transaction holds
# the file, far above what a batch of thousands records at once.
_MAX_GROUP: Final = 1024

# The group commit's window: while records keep coming, at most one commit
# per this many seconds. Longer windows make larger groups and cost less CPU
# per record (fewer commits, fewer wake-ups of the event loop); each record
# waits half of it on average, and only while the journal is busy.
_WINDOW: Final = 0.01

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE entries (
        idx INTEGER PRIMARY KEY CHECK (idx >= 0),
        state TEXT NOT NULL,
        request TEXT,
        raw_input TEXT,
        task_id TEXT,
        task TEXT,
        error TEXT,
        error_type TEXT,
        path TEXT,
        updated_at REAL NOT NULL
    )""",
)

_COLUMNS: Final = (
    "idx, state, request, raw_input, task_id, task, error, error_type, path, updated_at"
)

Op = Callable[[sqlite3.Connection], _T]
"""One step on the open connection, run inside a transaction.

An op checks everything before it writes, and writes with its last
statement: one that raises anything but :class:`sqlite3.Error` has changed
nothing, so the other ops of its group commit keep their records.
"""


# A stored task id may be compared as it is only when it has no backslash
# (see JournalEntry: a backslash may be an escape); {} is the id given.
_SAME_TASK_ID: Final = "(task_id IS NULL OR (task_id = {} AND instr(task_id, '\\') = 0))"

# How many rows the statements for many records of one kind have: a group's
# records are padded up to the next size with rows of index -1, which match and
# write nothing. A few fixed shapes stay in the connection's statement cache,
# so a group pays no statement compilation. The largest keeps the variables
# of one statement far below the 999 that even an SQLite built with the old
# default allows.
_SHAPES: Final = (4, 16, 48, 128)

# UPDATE ... FROM needs SQLite 3.33; with an older library every record runs
# alone, as it did before.
_STATEMENTS_FOR_MANY: Final = sqlite3.sqlite_version_info >= (3, 33, 0)


def _quoted(states: frozenset[EntryState | None]) -> str:
    """``states`` as an SQL list of literals (enum values: no quoting to escape)."""
    return ", ".join(sorted(f"'{state.value}'" for state in states if state is not None))


# The columns a task's record sets: state, task_id, task, error, error_type.
_Values = tuple[str, str | None, str, str | None, str | None]


# The values of the states a task's record writes, as plain str: a member's
# .value is a call for each record, and a plain str binds without an adapter lookup.
_SENDING: Final = EntryState.SENDING.value
_CREATED: Final = EntryState.CREATED.value
_COMPLETED: Final = EntryState.COMPLETED.value
_FAILED: Final = EntryState.FAILED.value


def _task_step(
    alone: Callable[..., None], journal: Journal, index: int, task: Task, values: _Values
) -> _Step[None]:
    """A task's record: its row for _RECORDS, and ``alone`` to run it by itself.

    ``values``: the columns it sets (state, task_id, task, error, error_type);
    in the row, '' stands for NULL (see _run_kind).
    """
    state, task_id, text, error, error_type = values
    row = (index, state, "", task_id or "", text, error or "", error_type or "")
    return _Step(alone, index, _RECORDS, row, (journal, index, task, values))


@attrs.frozen(eq=False)
class _Kind:
    """A kind of record that the entries of one group share one statement for.

    The statements read the group's records as the rows of ``VALUES``, named
    ``v``: ``v.column1`` is the index, then come the step's other ``row``
    values; ``{now}`` is the time of writing. ``write`` writes every record the
    table (and the task id) allows, each on its own entry. When it wrote
    fewer rows than it was given, ``unwritten`` selects the indices whose
    entry does not read exactly as the record would have written it. Those
    steps run alone, which writes them after all or raises the error that
    says why.

    The usual group thus costs one statement, whose result is one step of
    SQLite rather than one per record: each step lets go of the GIL, and
    taking it back from a busy event loop costs a switch of threads.
    """

    write: str
    unwritten: str
    width: int
    _texts: dict[tuple[str, int], tuple[str, int]] = attrs.field(factory=dict, init=False)

    def text(self, template: str, shape: int) -> tuple[str, int]:
        """``template`` with ``shape`` rows of VALUES where it says ``{rows}``.

        Returns the text and where the time goes among its variables: 1
        before the rows', -1 after them, 0 nowhere. The variables are plain
        ``?``, bound by position: binding by name costs SQLite a search of
        the statement's names for each variable, which for the largest shape
        was the biggest single cost of a group (and numbered ``?NNN`` bound to
        a sequence is deprecated since Python 3.12).
        """
        key = (template, shape)
        text = self._texts.get(key)
        if text is None:
            row = "(" + ", ".join("?" * self.width) + ")"
            now = template.find("{now}")
            where = 0 if now < 0 else 1 if now < template.index("{rows}") else -1
            text = self._texts[key] = (
                template.format(rows=", ".join([row] * shape), now="?"),
                where,
            )
        return text


def _unwritten(written: str) -> str:
    """The indices of ``v`` whose entry does not read as ``written`` says."""
    return (
        "SELECT v.column1 FROM (VALUES {rows}) AS v LEFT JOIN entries ON idx = v.column1"
        f" WHERE v.column1 >= 0 AND NOT coalesce({written}, 0)"
    )


# The states a task's record may move an entry to, and from which: pairs of
# (the state written, the state found), from the one table.
_TASK_MOVES: Final = ", ".join(
    f"('{after.value}', '{before.value}')"
    for after in (EntryState.CREATED, EntryState.COMPLETED, EntryState.FAILED)
    for before in sorted(state for state in sources(after) if state is not None)
)

# The three records every task makes, all in one statement: record_sending
# of an input that has no entry yet (the usual case by far) inserts its
# entry; record_created and record_finished update theirs, with the checks
# of Journal._update_task. A row is (index, state, request, task_id, task,
# error, error_type), '' standing for NULL: a new entry has no task, a
# task's record sets no request. The WHERE of the SELECT keeps the padding
# out, and a task's record for an entry that does not exist (inserting it
# would be wrong). An existing entry is updated only by a task's record that
# the table allows: a new entry's record that finds one writes nothing.
_RECORDS: Final = _Kind(
    "INSERT INTO entries (idx, state, request, task_id, task, error, error_type, updated_at)"
    " SELECT column1, column2, nullif(column3, ''), nullif(column4, ''), nullif(column5, ''),"
    " nullif(column6, ''), nullif(column7, ''), {now} FROM (VALUES {rows})"
    f" WHERE column1 >= 0 AND (column2 = '{EntryState.SENDING.value}'"
    " OR column1 IN (SELECT idx FROM entries))"
    " ON CONFLICT (idx) DO UPDATE SET state = excluded.state, task_id = excluded.task_id,"
    " task = excluded.task, error = excluded.error, error_type = excluded.error_type,"
    " updated_at = excluded.updated_at"
    f" WHERE (excluded.state, entries.state) IN (VALUES {_TASK_MOVES})"
    f" AND {_SAME_TASK_ID.format('excluded.task_id')}",
    # An entry that reads exactly as the record would leave it needs nothing
    # more: had this statement refused it, its step alone would write the
    # same values (see Journal._update_task). A new entry's record also
    # compares the request: an entry that was there before keeps its own
    # time of writing, so it never reads as written now.
    _unwritten(
        "state = v.column2 AND task_id IS nullif(v.column4, '') AND task IS nullif(v.column5, '')"
        " AND error IS nullif(v.column6, '') AND error_type IS nullif(v.column7, '')"
        " AND updated_at = {now}"
        f" AND (v.column2 <> '{EntryState.SENDING.value}' OR request IS nullif(v.column3, ''))"
    ),
    7,
)


class _Step(Generic[_T]):
    """An op on one entry; with a kind, it may share a statement with others of its group."""

    __slots__ = (
        "args",
        "fate",
        "future",
        "index",
        "kind",
        "loop",
        "result",
        "row",
        "run",
        "settled",
    )

    future: asyncio.Future[_T]
    loop: asyncio.AbstractEventLoop

    def __init__(
        self,
        run: Callable[..., _T],
        index: int | None,
        kind: _Kind | None = None,
        row: tuple[Any, ...] = (),
        args: tuple[Any, ...] = (),
    ) -> None:
        # run(connection, *args): the frequent records pass a plain function
        # and its arguments rather than a closure, which would cost a function
        # object and a cell per variable for every record (and more work for
        # the garbage collector while thousands of records are on their way).
        self.run = run
        self.index = index
        self.kind = kind if _STATEMENTS_FOR_MANY else None
        self.row = row
        self.args = args
        # The hand-off to a store's thread (see SQLiteStore._call) is kept on
        # the step itself rather than on a second object made for each record:
        # future and loop (set there) say where its result goes.
        self.settled = False
        # (True, what the op returned) or (False, its error), once it ran.
        self.result: tuple[bool, Any] = (False, None)
        # Made only when the caller was cancelled first: done once the op ran.
        self.fate: asyncio.Future[None] | None = None

    def __call__(self, connection: sqlite3.Connection) -> _T:
        return self.run(connection, *self.args)


class Journal:
    """The journal of one batch, kept in one SQLite file.

    Open it with :meth:`open` and close it with :meth:`close` or a ``with``
    block. Each method runs one short transaction and commits before it
    returns. A method that would move an entry in a way
    :data:`~banana_async.journal.TRANSITIONS` does not allow (out of
    ``COMPLETED`` or ``FAILED``, or from a final state to a new create)
    raises :class:`ValueError` and changes nothing; the one way back is
    :meth:`mark_resend`, for ``SENDING`` and ``UNCONFIRMED`` entries only.

    Methods are synchronous; a lock makes them safe to call from several
    threads. A batch does not call them on its event loop: it records
    through :meth:`store`, which runs them on a thread of its own. They take
    any ``str``, lone surrogates included (see :class:`JournalEntry` for how
    such text is stored).

    A write that the file system refuses (a full disk, an I/O error) raises
    :class:`sqlite3.Error`, usually :class:`sqlite3.OperationalError`: "database
    or disk is full" (``SQLITE_FULL``, also when the file would grow past
    :attr:`max_pages`) or "disk I/O error" (``SQLITE_IOERR``). Such a write
    changes nothing: its transaction is rolled back before the error
    propagates, the entry keeps its previous state, the journal stays
    readable, and later writes succeed once there is room again. That error
    is how a caller learns that a step was not recorded: a batch must stop
    relying on the journal at the first one (a task created but not recorded
    would be created again by the next run).

    Attributes:
        path: The journal's file name, as given to :meth:`open`.
    """

    def __init__(
        self, connection: sqlite3.Connection, path: str, *, exclusive: bool = False
    ) -> None:
        """Wrap an open and checked connection; use :meth:`open` instead."""
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()
        self.path = path
        # The highest index that may have an entry, while nobody else can
        # write the file (the exclusive lock); None: unknown, always look.
        # Every write raises it first, so a fresh batch's ``get`` of a new
        # input needs no trip to the file (see SQLiteStore.get).
        self._highest: int | None = None
        if exclusive:
            try:
                row = connection.execute("SELECT max(idx) FROM entries").fetchone()
            except sqlite3.Error as exc:
                raise self._corrupt(f"its entries cannot be read ({exc})") from exc
            self._highest = -1 if row[0] is None else int(row[0])

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, exclusive: bool = True) -> Self:
        """Open the journal at ``path``, creating the file if it does not exist.

        The parent directory must exist. A new file is made readable and
        writable by its owner only (mode 0600, and so are its ``-wal`` and
        ``-shm`` files). An empty SQLite file (or a new one) becomes a
        journal; any other SQLite database, or any other file, is refused
        without being changed. This may wait about a second for a
        busy file: from a coroutine, use :meth:`~banana_async.journal.SQLiteStore.open`.

        Args:
            path: The journal file.
            exclusive: Hold a lock on the file until :meth:`close`, so that a
                second open of the same journal (from this process or another)
                fails instead of running the same batch twice, which would
                create and bill its tasks twice. The lock goes with the process
                if it dies. Of several processes opening the same file at the
                same moment, exactly one gets it; the others keep trying for
                about a second, then fail.

        Raises:
            JournalError: The file cannot be opened, is not a journal, was
                written by a newer version of ``banana_async``, or is in use
                by another open journal.
        """
        name = os.fspath(path)
        deadline = time.monotonic() + _BUSY_TIMEOUT
        while True:
            try:
                connection = _connect(name, exclusive=exclusive)
            except sqlite3.Error as exc:  # _connect lets only "busy" through
                if time.monotonic() >= deadline:
                    raise JournalError(
                        f"journal {name!r} is in use by another open journal "
                        "(is the same batch running twice?)",
                        path=name,
                    ) from exc
            else:
                try:
                    return cls(connection, name, exclusive=exclusive)
                except BaseException:
                    connection.close()
                    raise
            time.sleep(random.uniform(0.0, _RETRY_PAUSE))

    def close(self) -> None:
        """Close the file (and release its lock); closing twice is harmless."""
        with self._lock:
            if self._connection is not None:
                connection, self._connection = self._connection, None
                connection.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._connection is None

    def store(self) -> SQLiteStore:
        """An async store over this journal, for a batch.

        See :class:`~banana_async.journal.SQLiteStore`.

        Closing the store stops its thread and leaves this journal open.
        """
        return SQLiteStore(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Journal {self.path!r} {state}>"

    # -- reading -------------------------------------------------------------

    def get(self, index: int) -> JournalEntry | None:
        """Return the entry of input ``index``, or None if nothing is recorded."""
        return self._run(self._op_get(index))

    def entries(self) -> Iterator[JournalEntry]:
        """Iterate over all entries in index order (read at once, when called)."""
        with self._transaction() as connection:
            rows = connection.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY idx").fetchall()
        return iter([self._entry(row) for row in rows])

    def counts(self) -> dict[EntryState, int]:
        """Count the entries in each state; every state is a key, zero included."""
        with self._transaction() as connection:
            rows = connection.execute("SELECT state, COUNT(*) FROM entries GROUP BY state")
            found = {str(state): int(count) for state, count in rows}
        unknown = set(found) - set(EntryState)
        if unknown:
            raise self._corrupt(f"unknown states {sorted(unknown)}")
        return {state: found.get(state.value, 0) for state in EntryState}

    def request_matches(
        self, index: int, request: GenerationRequest | None, *, raw_input: str | None = None
    ) -> bool:
        """Tell whether the entry of ``index`` was recorded for this same input.

        Requests are compared by their :func:`~banana_async.journal.canonical_request` text, so a
        journal reused with a different list of inputs is detected. For an
        input that was not a valid request, pass None and its ``raw_input``.

        Returns:
            False when the inputs differ, or when nothing is recorded for ``index``.
        """
        return self._run(self._op_request_matches(index, request, raw_input))

    @property
    def fingerprint(self) -> str | None:
        """A text identifying the batch's inputs (chosen by the batch), or None.

        Setting it commits at once; a write that fails raises
        :class:`sqlite3.Error` and changes nothing (see :class:`~banana_async.Journal`).
        """
        with self._transaction() as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        return None if row is None else str(row[0])

    @fingerprint.setter
    def fingerprint(self, value: str | None) -> None:
        with self._transaction(write=True) as connection:
            if value is None:
                connection.execute("DELETE FROM meta WHERE key = 'fingerprint'")
            else:
                connection.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('fingerprint', ?)",
                    (str(value),),
                )

    @property
    def max_pages(self) -> int:
        """The most pages the file may grow to while this journal is open.

        SQLite's ``max_page_count`` for this connection: it is not stored in
        the file, and each :meth:`open` starts with SQLite's default (about a
        billion pages, in effect no cap). A write that would grow the file
        past it fails as on a full disk, with :class:`sqlite3.OperationalError`
        ("database or disk is full"), and changes nothing. A value below the
        file's current size caps it at that size, so ``journal.max_pages = 1``
        makes the disk "full" from then on; setting the value read before
        lifts the cap again.

        Writes that fit in pages the file already has (free space in a page,
        pages left free by earlier writes) still succeed: this caps the
        file's size and is not a switch that fails every write. It exists for
        quotas and for tests of what happens when the journal cannot be
        written, with SQLite's own failure rather than a fake one.

        Raises:
            ValueError: Set to anything but an int >= 1, or the journal is closed.
        """
        with self._transaction() as connection:
            return int(connection.execute("PRAGMA max_page_count").fetchone()[0])

    @max_pages.setter
    def max_pages(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            # 0 would not cap anything: SQLite reads it as a query.
            raise ValueError(f"max_pages is an int >= 1, not {value!r}")
        with self._transaction() as connection:
            connection.execute(f"PRAGMA max_page_count = {value}")

    @property
    def provider(self) -> JournalProvider | None:
        """The provider recorded by :meth:`bind_provider`, or None before the first bind."""
        with self._transaction() as connection:
            return self._provider(connection)

    def bind_provider(self, dialect: str, create_base_url: str, query_base_url: str) -> None:
        """Tie the journal to one provider, or check that it is the one recorded.

        Task ids mean something only at the provider that created them: a
        journal resumed against another dialect or other base URLs would
        poll ids that do not exist there (or belong to someone else). The
        first call records the provider, committed at once; every later
        call, in this open or a later one, compares (see
        :meth:`~banana_async.journal.JournalProvider.same_as`). A journal
        written before this method existed has no provider and takes the
        first one bound.

        Args:
            dialect: The dialect's name, e.g. ``nano``.
            create_base_url: The base URL that creates are sent to.
            query_base_url: The base URL that status queries are sent to.

        Raises:
            JournalError: Another provider is recorded; the message names
                both. Nothing is written.
            sqlite3.Error: The first bind could not be written (a full
                disk, an I/O error); nothing was changed. See :class:`~banana_async.Journal`.
        """
        self._run(self._op_bind_provider(dialect, create_base_url, query_base_url), write=True)

    # -- writing -------------------------------------------------------------

    def record_sending(self, index: int, request: GenerationRequest) -> JournalEntry:
        """Record that the create of ``request`` is about to be sent.

        Call it before sending, and send only once it has returned. An
        ``ERROR`` entry may be sent again: nothing was created for it.

        Raises:
            ValueError: Anything but an ``ERROR`` is already recorded for
                ``index`` (a second create would bill a second task; see
                :meth:`mark_resend`).
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        return self._record(index, self._op_record_sending(index, request))

    def record_created(self, index: int, task: Task) -> JournalEntry:
        """Record the task the create returned (or a newer snapshot of it).

        Raises:
            ValueError: The entry is not ``SENDING`` or ``CREATED``, or it holds
                another task id.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        return self._record(index, self._op_record_created(index, task))

    def record_finished(self, index: int, task: Task) -> JournalEntry:
        """Record a task that ended: ``COMPLETED`` or ``FAILED`` from its status.

        A failed task's message is kept as the error, typed ``TaskFailedError``.
        Recording the same end again is allowed (a downloaded path is kept);
        turning ``COMPLETED`` into ``FAILED`` or back is not.

        Raises:
            ValueError: The task has not ended; the entry is not ``SENDING``,
                ``CREATED`` or already in the task's end state; or it holds
                another task id.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        return self._record(index, self._op_record_finished(index, task))

    def record_error(
        self,
        index: int,
        request: GenerationRequest | None,
        error: BaseException,
        *,
        raw_input: str | None = None,
    ) -> JournalEntry:
        """Record that input ``index`` failed with certainly nothing created.

        For an invalid request, a create the provider refused (a 400), or one
        that was never sent. A resumed batch tries the input again
        (recording an error again over an ``ERROR`` entry replaces it).

        Args:
            index: The input's position.
            request: The request, or None if the input is not a valid one
                (None keeps a request recorded by :meth:`record_sending`).
            error: The exception; its message and class name are recorded.
            raw_input: The input as text, when there is no request.

        Raises:
            ValueError: The entry is not new, ``SENDING`` or ``ERROR``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        return self._record(index, self._op_record_error(index, request, error, raw_input))

    def record_unconfirmed(
        self,
        index: int,
        request: GenerationRequest,
        error: BaseException,
        *,
        task_id: str | None = None,
    ) -> JournalEntry:
        """Record that the create of a ``SENDING`` entry may have created a task.

        For a create that failed after it was sent (a 5xx, a reset, a read
        timeout), or a ``SENDING`` entry found when a batch resumes. The entry
        is final unless :meth:`mark_resend` is called.

        Args:
            index: The input's position.
            request: The request whose create failed.
            error: The exception; its message and class name are recorded.
            task_id: A task id the failed answer carried anyway (an error code
                beside an id, an id no URL can hold), kept for a human to
                check; stored as plain text (see :class:`JournalEntry`).

        Raises:
            ValueError: The entry is not ``SENDING``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        return self._record(index, self._op_record_unconfirmed(index, request, error, task_id))

    def record_download(self, index: int, path: str | os.PathLike[str]) -> JournalEntry:
        """Record where the image of a ``COMPLETED`` entry was saved.

        Recording again replaces the path; an error noted before is cleared.

        Raises:
            ValueError: The entry is not ``COMPLETED``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        return self._record(index, self._op_record_download(index, path))

    def note_error(self, index: int, error: BaseException) -> JournalEntry:
        """Keep an error on an entry without changing its state.

        For failures that leave the entry where it is: a wait that timed out
        (still ``CREATED``, polled again on resume) or a download that failed
        (still ``COMPLETED``, without a path).

        Raises:
            ValueError: Nothing is recorded for ``index``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        return self._record(index, self._op_note_error(index, error))

    def mark_resend(self, index: int) -> None:
        """Forget a ``SENDING``, ``UNCONFIRMED`` or ``FAILED`` entry so that it is created again.

        The provider may already have created (and billed) a task for it:
        call this only when the user asked to resend unconfirmed creates, or
        to retry failed tasks.

        Raises:
            ValueError: The entry is not ``SENDING``, ``UNCONFIRMED`` or ``FAILED``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`~banana_async.Journal`.
        """
        self._run(self._op_mark_resend(index), write=True)

    # -- the steps, shared by these methods and by SQLiteStore ----------------------
    #
    # Each _op_* checks its arguments at once (in the caller's thread) and
    # returns the step to run on the connection. A step reads what it must
    # check, raises before writing if the table forbids the record, and
    # writes with its last statement (see Op).

    def _op_get(self, index: int) -> _Step[JournalEntry | None]:
        check_index(index)
        return _Step(lambda connection: self._get(connection, index), index)

    def _op_request_matches(
        self, index: int, request: GenerationRequest | None, raw_input: str | None
    ) -> _Step[bool]:
        check_index(index)

        def step(connection: sqlite3.Connection) -> bool:
            row = connection.execute(
                "SELECT request, raw_input FROM entries WHERE idx = ?", (index,)
            ).fetchone()
            if row is None:
                return False
            stored_request, stored_raw = row
            if request is None:
                return stored_request is None and stored_raw == storable(raw_input)
            return stored_request is not None and stored_request == canonical_request(request)

        return _Step(step, index)

    def _op_bind_provider(
        self, dialect: str, create_base_url: str, query_base_url: str
    ) -> _Step[None]:
        given = JournalProvider(dialect, create_base_url, query_base_url)

        def step(connection: sqlite3.Connection) -> None:
            recorded = self._provider(connection)
            if recorded is None:
                value = json.dumps(attrs.asdict(given), sort_keys=True, ensure_ascii=True)
                connection.execute("INSERT INTO meta (key, value) VALUES ('provider', ?)", (value,))
            elif not recorded.same_as(given):
                raise JournalError(
                    f"journal {self.path!r} belongs to another provider: it was recorded "
                    f"for {recorded}, not {given}; its task ids mean nothing there",
                    path=self.path,
                )

        return _Step(step, None)

    def _op_record_sending(self, index: int, request: GenerationRequest) -> _Step[None]:
        check_index(index)

        text = canonical_request(request)
        return _Step(
            Journal._sending_alone,
            index,
            _RECORDS,
            (index, _SENDING, text, "", "", "", ""),
            (self, index, text),
        )

    @staticmethod
    def _sending_alone(
        connection: sqlite3.Connection, journal: Journal, index: int, text: str
    ) -> None:
        """record_sending's step when it runs alone (see _Kind)."""
        if not journal._surely_absent(index):
            journal._expect(connection, index, EntryState.SENDING, "record a new create")
        journal._raise_highest(index)
        # A new create starts a new entry: nothing of an ERROR entry stays.
        connection.execute(
            f"INSERT OR REPLACE INTO entries ({_COLUMNS})"
            " VALUES (?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, ?)",
            (index, EntryState.SENDING.value, text, time.time()),
        )

    def _op_record_created(self, index: int, task: Task) -> _Step[None]:
        check_index(index)

        values = (_CREATED, storable(task.id), dumps_task(task), None, None)
        return _task_step(Journal._created_alone, self, index, task, values)

    def _op_record_finished(self, index: int, task: Task) -> _Step[None]:
        check_index(index)
        status = task.status
        if status is TaskStatus.COMPLETED:
            values: _Values = (_COMPLETED, storable(task.id), dumps_task(task), None, None)
        elif status.terminal:
            error = storable(task.error or f"task {task.id} failed")
            values = (_FAILED, storable(task.id), dumps_task(task), error, "TaskFailedError")
        else:
            raise ValueError(f"task {task.id} has not finished (status {status.value!r})")
        return _task_step(Journal._finished_alone, self, index, task, values)

    @staticmethod
    def _created_alone(
        connection: sqlite3.Connection, journal: Journal, index: int, task: Task, values: _Values
    ) -> None:
        """record_created's step when it runs alone (see _Kind)."""
        journal._update_task(connection, index, task, values, action="record its task")

    @staticmethod
    def _finished_alone(
        connection: sqlite3.Connection, journal: Journal, index: int, task: Task, values: _Values
    ) -> None:
        """record_finished's step when it runs alone (see _Kind)."""
        journal._update_task(connection, index, task, values, action="record its end")

    def _op_record_error(
        self,
        index: int,
        request: GenerationRequest | None,
        error: BaseException,
        raw_input: str | None,
    ) -> _Step[None]:
        check_index(index)
        text, kind = storable(error_text(error)), storable(type(error).__name__)

        def step(connection: sqlite3.Connection) -> None:
            self._expect(connection, index, EntryState.ERROR, "record an error")
            self._raise_highest(index)
            # An upsert: None keeps what a SENDING entry recorded before.
            connection.execute(
                "INSERT INTO entries (idx, state, request, raw_input, error, error_type,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idx) DO UPDATE SET"
                " state = excluded.state, request = coalesce(excluded.request, request),"
                " raw_input = coalesce(excluded.raw_input, raw_input), error = excluded.error,"
                " error_type = excluded.error_type, updated_at = excluded.updated_at",
                (
                    index,
                    EntryState.ERROR.value,
                    None if request is None else canonical_request(request),
                    storable(raw_input),
                    text,
                    kind,
                    time.time(),
                ),
            )

        return _Step(step, index)

    def _op_record_unconfirmed(
        self,
        index: int,
        request: GenerationRequest,
        error: BaseException,
        task_id: str | None,
    ) -> _Step[None]:
        check_index(index)
        text, kind = storable(error_text(error)), storable(type(error).__name__)

        def step(connection: sqlite3.Connection) -> None:
            self._expect(connection, index, EntryState.UNCONFIRMED, "record an unconfirmed create")
            connection.execute(
                "UPDATE entries SET state = ?, request = ?, task_id = coalesce(?, task_id),"
                " error = ?, error_type = ?, updated_at = ? WHERE idx = ?",
                (
                    EntryState.UNCONFIRMED.value,
                    canonical_request(request),
                    storable(task_id),
                    text,
                    kind,
                    time.time(),
                    index,
                ),
            )

        return _Step(step, index)

    def _op_record_download(self, index: int, path: str | os.PathLike[str]) -> _Step[None]:
        check_index(index)
        where = storable(os.fspath(path))

        def step(connection: sqlite3.Connection) -> None:
            state = self._state(connection, index)[0]
            if state is not EntryState.COMPLETED:  # a step inside COMPLETED, not a transition
                raise _illegal(index, state, "record a download")
            connection.execute(
                "UPDATE entries SET path = ?, error = NULL, error_type = NULL, updated_at = ?"
                " WHERE idx = ?",
                (where, time.time(), index),
            )

        return _Step(step, index)

    def _op_note_error(self, index: int, error: BaseException) -> _Step[None]:
        check_index(index)
        text, kind = storable(error_text(error)), storable(type(error).__name__)

        def step(connection: sqlite3.Connection) -> None:
            state = self._state(connection, index)[0]
            if state is None:  # any entry keeps an error; no transition
                raise _illegal(index, state, "note an error")
            connection.execute(
                "UPDATE entries SET error = ?, error_type = ?, updated_at = ? WHERE idx = ?",
                (text, kind, time.time(), index),
            )

        return _Step(step, index)

    def _op_mark_resend(self, index: int) -> _Step[None]:
        check_index(index)

        def step(connection: sqlite3.Connection) -> None:
            self._expect(connection, index, None, "mark it to resend")
            connection.execute("DELETE FROM entries WHERE idx = ?", (index,))

        return _Step(step, index)

    # -- internals -----------------------------------------------------------

    def _run(self, op: Op[_T], *, write: bool = False) -> _T:
        with self._transaction(write=write) as connection:
            return op(connection)

    def _record(self, index: int, op: Op[None]) -> JournalEntry:
        """Run a recording step and return the entry as it now reads back."""
        with self._transaction(write=True) as connection:
            op(connection)
            entry = self._get(connection, index)
        assert entry is not None  # every record but mark_resend leaves an entry
        return entry

    def _run_group(self, steps: list[_Step[Any]]) -> list[tuple[bool, Any]]:
        """Run ``steps`` in one transaction; return (True, result) or (False, error) for each.

        A step that raises anything but :class:`sqlite3.Error` changed
        nothing (see :data:`Op`): it fails alone. When the database fails
        (a full disk, an I/O error), the whole transaction is rolled back
        and each step runs again in a transaction of its own, so that each
        result says exactly whether that step's record was committed.
        """
        if _one_statement(steps):
            return self._run_statement(steps)
        results: list[tuple[bool, Any]] = [(False, None)] * len(steps)
        try:
            with self._transaction(write=True) as connection:
                self._run_steps(connection, steps, results)
        except sqlite3.Error as exc:
            if len(steps) == 1:
                return [(False, exc)]
            return [self._run_group([step])[0] for step in steps]
        except Exception as exc:  # closed, or a failed BEGIN: nothing ran
            return [(False, exc)] * len(steps)
        return results

    def _run_statement(self, steps: list[_Step[Any]]) -> list[tuple[bool, Any]]:
        """Run a group of records of one statement (see _one_statement) without a transaction.

        One statement commits alone, all or nothing, and a group that needs
        no BEGIN and no COMMIT takes the GIL back three times fewer: each of
        those statements lets go of it, and a busy event loop hands it back
        only at its next system call. Records the statement refused run
        alone afterwards, which writes them after all or says why not.
        """
        try:
            with self._lock:
                connection = self._connection
                if connection is None:
                    raise ValueError(f"journal {self.path!r} is closed")
                if connection.in_transaction:
                    connection.execute("ROLLBACK")  # see _transaction
                now = time.time()
                written = _write_records(self, connection, _RECORDS, steps, now)
                if written == len(steps):
                    return [(True, None)] * len(steps)
                alone = _indices(connection, _RECORDS, steps, now)
        except sqlite3.Error:
            # Nothing was written: each runs alone, to learn its own fate.
            return [self._run_group([step])[0] for step in steps]
        except Exception as exc:  # closed: nothing ran
            return [(False, exc)] * len(steps)
        return [
            self._run_group([step])[0] if step.index in alone else (True, None) for step in steps
        ]

    def _run_steps(
        self,
        connection: sqlite3.Connection,
        steps: list[_Step[Any]],
        results: list[tuple[bool, Any]],
    ) -> None:
        """Run ``steps`` on ``connection``, putting each one's result at its place in ``results``.

        Steps of one kind share statements (see _Kind). Each touches only its
        own entry, so running them together, out of their order, ends as
        running them one by one would. Order is kept wherever it could
        matter: a step on an entry that an earlier step of the group touched,
        or one on no single entry, first runs everything held back before it.
        """
        waiting: dict[_Kind, list[int]] = {}  # places of steps held back, by kind
        touched: set[int] = set()  # entries touched since all before ran
        for place, step in enumerate(steps):
            index = step.index
            if index is None or index in touched:
                self._run_together(connection, steps, waiting, results)
                waiting.clear()
                touched.clear()
            if index is not None:
                touched.add(index)
                kind = step.kind
                if kind is not None:
                    if kind in waiting:
                        waiting[kind].append(place)
                    else:
                        waiting[kind] = [place]
                    continue
            results[place] = _run_one(connection, step)
        self._run_together(connection, steps, waiting, results)

    def _run_together(
        self,
        connection: sqlite3.Connection,
        steps: list[_Step[Any]],
        waiting: dict[_Kind, list[int]],
        results: list[tuple[bool, Any]],
    ) -> None:
        """Run the steps held back, one statement per kind in the usual case (see _Kind)."""
        for kind, places in waiting.items():
            if len(places) == 1:
                results[places[0]] = _run_one(connection, steps[places[0]])
                continue
            largest = _SHAPES[-1]
            for start in range(0, len(places), largest):
                part = places[start : start + largest]
                group = [steps[place] for place in part]
                now = time.time()
                alone: set[int] = set()
                if _write_records(self, connection, kind, group, now) != len(group):
                    alone = _indices(connection, kind, group, now)
                for place in part:
                    step = steps[place]
                    # A record the statement did not write: its step, alone,
                    # writes it after all or raises the error that says why.
                    ok = step.index not in alone
                    results[place] = (True, None) if ok else _run_one(connection, step)

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._connection
            if connection is None:
                raise ValueError(f"journal {self.path!r} is closed")
            if connection.in_transaction:
                # Only if the ROLLBACK below itself failed: end that transaction
                # now, or every later call would fail at BEGIN.
                connection.execute("ROLLBACK")
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                # A failed statement or COMMIT (a full disk: SQLITE_FULL or
                # SQLITE_IOERR) may leave the transaction open; SQLite may also
                # have rolled it back already. Either way nothing of it stays.
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def _update_task(
        self,
        connection: sqlite3.Connection,
        index: int,
        task: Task,
        values: tuple[str, str | None, str, str | None, str | None],
        *,
        action: str,
    ) -> None:
        """Record ``task`` on entry ``index`` (``values``: see _task_step), if allowed.

        The table must let the new state follow the entry's, and the entry
        must hold no task id yet, or this one. The usual case is one
        statement: an UPDATE whose WHERE holds those checks. When it changes
        no row, the checks run one by one to say why.
        """
        state = EntryState(values[0])
        row = (*values, time.time(), index)
        update = (
            "UPDATE entries SET state = ?, task_id = ?, task = ?, error = ?, error_type = ?,"
            " updated_at = ? WHERE idx = ?"
        )
        checked = connection.execute(
            update + f" AND state IN ({_quoted(sources(state))}) AND {_SAME_TASK_ID.format('?')}",
            (*row, values[1]),
        )
        if checked.rowcount == 1:
            return
        task_id = self._expect(connection, index, state, action)
        self._check_task_id(connection, index, task_id, task)
        connection.execute(update, row)

    def _raise_highest(self, index: int) -> None:
        """Note, before writing it, that entry ``index`` may exist from now on."""
        if self._highest is not None and index > self._highest:
            self._highest = index

    def _surely_absent(self, index: int) -> bool:
        """True when entry ``index`` certainly does not exist, without reading the file.

        Only while the file is locked for this journal (nobody else writes
        it) and open, for an index above every entry there was or is being
        written. Called from any thread: ``_highest`` only grows, and it
        grows before the write that needs it.
        """
        highest = self._highest
        return highest is not None and index > highest and self._connection is not None

    def _get(self, connection: sqlite3.Connection, index: int) -> JournalEntry | None:
        row = connection.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE idx = ?", (index,)
        ).fetchone()
        return None if row is None else self._entry(row)

    def _state(self, connection: sqlite3.Connection, index: int) -> tuple[EntryState | None, Any]:
        """The state of entry ``index`` (None: nothing recorded) and its stored task id."""
        row = connection.execute(
            "SELECT state, task_id FROM entries WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            return None, None
        try:
            return EntryState(row[0]), row[1]
        except ValueError as exc:
            raise self._corrupt(f"entry {index} cannot be read ({exc})") from exc

    def _expect(
        self, connection: sqlite3.Connection, index: int, after: EntryState | None, action: str
    ) -> str | None:
        """Check that the table lets entry ``index`` become ``after``; return its task id."""
        state, task_id = self._state(connection, index)
        if not may_follow(state, after):
            raise _illegal(index, state, action)
        return None if task_id is None else str(task_id)

    def _check_task_id(
        self, connection: sqlite3.Connection, index: int, stored: str | None, task: Task
    ) -> None:
        if stored is None:
            return
        given = storable(task.id)
        if stored == given and given == task.id:
            return
        # The column holds escaped text (see JournalEntry); the recorded
        # task's JSON holds the exact id.
        row = connection.execute("SELECT task FROM entries WHERE idx = ?", (index,)).fetchone()
        exact = stored
        if row is not None and row[0] is not None:
            exact = str(json.loads(row[0]).get("id", stored))
        if exact != task.id:
            raise ValueError(f"input {index} already has task {exact}, not {task.id}")

    def _entry(self, row: tuple[Any, ...]) -> JournalEntry:
        try:
            return entry_from_row(row)
        except Exception as exc:
            raise self._corrupt(f"entry {row[0]} cannot be read ({exc})") from exc

    def _provider(self, connection: sqlite3.Connection) -> JournalProvider | None:
        row = connection.execute("SELECT value FROM meta WHERE key = 'provider'").fetchone()
        if row is None:
            return None
        try:
            fields = json.loads(row[0])
            return JournalProvider(
                str(fields["dialect"]),
                str(fields["create_base_url"]),
                str(fields["query_base_url"]),
            )
        except Exception as exc:
            raise self._corrupt(f"its provider cannot be read ({exc})") from exc

    def _corrupt(self, detail: str) -> JournalError:
        return JournalError(f"journal {self.path!r} is damaged: {detail}", path=self.path)


def _run_kind(
    connection: sqlite3.Connection,
    kind: _Kind,
    template: str,
    steps: list[_Step[Any]],
    now: float,
) -> sqlite3.Cursor:
    """Run ``template`` of ``kind`` over ``steps``, padded to a shape with rows writing nothing."""
    shape = next(size for size in _SHAPES if size >= len(steps))
    text, where = kind.text(template, shape)
    values: list[Any] = [now] if where == 1 else []
    for step in steps:
        values += step.row
    # Padding rows: index -1 matches no entry (and is filtered out), and
    # integers bind at a fraction of NULL's cost (the sqlite3 module looks
    # for an adapter for every None it binds).
    values += [-1] * (kind.width * (shape - len(steps)))
    if where == -1:
        values.append(now)
    return connection.execute(text, values)


def _write_records(
    journal: Journal,
    connection: sqlite3.Connection,
    kind: _Kind,
    steps: list[_Step[Any]],
    now: float,
) -> int:
    """Write the records of ``steps`` that the table allows; return how many were written."""
    sending = _SENDING
    new = [step.row[0] for step in steps if step.row[1] == sending]
    if new:
        journal._raise_highest(max(new))
    return _run_kind(connection, kind, kind.write, steps, now).rowcount


def _one_statement(steps: list[_Step[Any]]) -> bool:
    """True when one statement writes ``steps``: records of _RECORDS, each on its own entry."""
    if not 1 < len(steps) <= _SHAPES[-1]:
        return False
    indices = set()
    for step in steps:
        if step.kind is not _RECORDS:
            return False
        indices.add(step.index)
    return len(indices) == len(steps)


def _indices(
    connection: sqlite3.Connection, kind: _Kind, steps: list[_Step[Any]], now: float
) -> set[int]:
    """Run ``kind.unwritten`` over ``steps``; return the indices it selects."""
    return {int(row[0]) for row in _run_kind(connection, kind, kind.unwritten, steps, now)}


def _run_one(connection: sqlite3.Connection, op: Op[Any]) -> tuple[bool, Any]:
    """Run one op of a group: (True, result), or (False, error) for an error of its own."""
    try:
        return True, op(connection)
    except sqlite3.Error:
        raise  # the database failed: the whole group is rolled back
    except Exception as exc:
        return False, exc


def _illegal(index: int, state: EntryState | None, action: str) -> ValueError:
    shown = "nothing recorded" if state is None else f"state {state.value!r}"
    return ValueError(f"cannot {action} for input {index}: it has {shown}")


class SQLiteStore:
    """The embedded :class:`~banana_async.journal.JournalStore`: a journal on a thread.

    Every call is handed to one worker thread of the store, which runs it on
    the journal's connection, so the event loop never waits on the disk.
    The thread takes every call waiting when it is free and runs them in one
    transaction (group commit): the records made while one commit is under
    way share the next, and the records of one kind in a group (new entries;
    tasks created or finished) share one statement. Each call returns once
    its own record is committed,
    so a record that returned survives a ``SIGKILL`` of the process at any
    moment after it (see :class:`~banana_async.Journal` for what a commit is). A call that
    the table forbids fails alone; when the database fails (a full disk),
    the group is rolled back and its calls run again one by one, so each
    caller learns exactly whether its own record was made.

    A caller cancelled while its record is on the way still waits for the
    record's fate, then is cancelled: a record never ends half-known.

    Open one with :meth:`open` (it owns its journal and closes it in
    :meth:`aclose`), or take one over a journal you opened with
    :meth:`~banana_async.Journal.store` (closing the store leaves the journal open).

    Attributes:
        journal: The journal this store writes.
    """

    def __init__(self, journal: Journal, *, owns_journal: bool = False) -> None:
        """Make a store over an open ``journal``; ``owns_journal``: close it in :meth:`aclose`."""
        self.journal = journal
        self._owns_journal = owns_journal
        self._calls: queue.SimpleQueue[_Step[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, exclusive: bool = True) -> Self:
        """Open the journal at ``path`` (see :meth:`~banana_async.Journal.open`) off the event loop.

        Raises:
            JournalError: The file cannot be opened, is not a journal, was
                written by a newer version of ``banana_async``, or is in use.
        """
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, lambda: Journal.open(path, exclusive=exclusive))
        try:
            journal = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Nobody will use a journal opened after all: release its lock.
            opening.add_done_callback(_close_opened)
            raise
        return cls(journal, owns_journal=True)

    @property
    def name(self) -> str:
        """The journal's file name."""
        return self.journal.path

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.journal.path!r}{' closed' if self._closing else ''}>"

    # -- the protocol -------------------------------------------------------------

    async def bind_provider(self, dialect: str, create_base_url: str, query_base_url: str) -> None:
        """See :meth:`~banana_async.Journal.bind_provider`."""
        await self._call(self.journal._op_bind_provider(dialect, create_base_url, query_base_url))

    async def get(self, index: int) -> JournalEntry | None:
        """See :meth:`~banana_async.Journal.get`."""
        check_index(index)
        if not self._closing and self.journal._surely_absent(index):
            # A new input of a fresh batch: no trip to the file, and the
            # batch's reader does not wait on a commit for every input.
            return None
        return await self._call(self.journal._op_get(index))

    async def request_matches(
        self, index: int, request: GenerationRequest | None, *, raw_input: str | None = None
    ) -> bool:
        """See :meth:`~banana_async.Journal.request_matches`."""
        return await self._call(self.journal._op_request_matches(index, request, raw_input))

    def record_sending(self, index: int, request: GenerationRequest) -> Coroutine[Any, Any, None]:
        """See :meth:`~banana_async.Journal.record_sending`."""
        # Not a coroutine itself: the caller awaits _call's, one frame fewer
        # for each of the three records every task makes.
        return self._call(self.journal._op_record_sending(index, request))

    def record_created(self, index: int, task: Task) -> Coroutine[Any, Any, None]:
        """See :meth:`~banana_async.Journal.record_created`."""
        # Not a coroutine itself: the caller awaits _call's, one frame fewer
        # for each of the three records every task makes.
        return self._call(self.journal._op_record_created(index, task))

    def record_finished(self, index: int, task: Task) -> Coroutine[Any, Any, None]:
        """See :meth:`~banana_async.Journal.record_finished`."""
        # Not a coroutine itself: the caller awaits _call's, one frame fewer
        # for each of the three records every task makes.
        return self._call(self.journal._op_record_finished(index, task))

    async def record_error(
        self,
        index: int,
        request: GenerationRequest | None,
        error: BaseException,
        *,
        raw_input: str | None = None,
    ) -> None:
        """See :meth:`~banana_async.Journal.record_error`."""
        await self._call(self.journal._op_record_error(index, request, error, raw_input))

    async def record_unconfirmed(
        self,
        index: int,
        request: GenerationRequest,
        error: BaseException,
        *,
        task_id: str | None = None,
    ) -> None:
        """See :meth:`~banana_async.Journal.record_unconfirmed`."""
        await self._call(self.journal._op_record_unconfirmed(index, request, error, task_id))

    async def record_download(self, index: int, path: str | os.PathLike[str]) -> None:
        """See :meth:`~banana_async.Journal.record_download`."""
        await self._call(self.journal._op_record_download(index, path))

    async def note_error(self, index: int, error: BaseException) -> None:
        """See :meth:`~banana_async.Journal.note_error`."""
        await self._call(self.journal._op_note_error(index, error))

    async def mark_resend(self, index: int) -> None:
        """See :meth:`~banana_async.Journal.mark_resend`."""
        await self._call(self.journal._op_mark_resend(index))

    async def aclose(self) -> None:
        """Let every call made so far finish, stop the thread, and close an owned journal.

        Closing twice is harmless; a call made after it raises :class:`ValueError`.
        """
        if self._closing:
            return
        self._closing = True
        thread = self._thread
        if thread is not None:
            self._calls.put(None)
            loop = asyncio.get_running_loop()
            stopped = loop.run_in_executor(None, thread.join)
            await _finish(stopped)
        if self._owns_journal:
            self.journal.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the thread -------------------------------------------------------------

    async def _call(self, op: _Step[_T]) -> _T:
        if self._closing:
            raise ValueError(f"journal store {self.journal.path!r} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name=f"banana_async-journal {self.journal.path}", daemon=True
            )
            self._thread.start()
        op.future = future
        op.loop = loop
        self._calls.put(op)
        try:
            return await future
        except asyncio.CancelledError:
            if op.settled:
                raise  # the record's fate was known already
            # The op is on its way to the thread: learn whether it was
            # recorded before the caller goes (see the class).
            op.fate = loop.create_future()
            await _finish(op.fate)
            raise

    def _work(self) -> None:
        """The worker thread: take what is waiting, run it in one transaction, report."""
        calls = self._calls
        last = 0.0
        busy = False
        while True:
            group: list[_Step[Any]] = []
            if busy:
                # The journal is busy (see below): more records are on their
                # way. Gather them for a window after the last commit, so that
                # one commit (and one wake-up of the event loop) serves many.
                # Sleeping first and then taking what came, rather than
                # waiting for the first record and then sleeping, takes the
                # GIL back once per group instead of twice.
                pause = last + _WINDOW - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                stop = _take(calls, group)
                if not group:
                    if stop:
                        return
                    busy = False  # a quiet window: the next caller is served at once
                    continue
            else:
                # Idle: a caller alone (one record after another, as a resume
                # reads its inputs) is served at once, never kept waiting.
                first = calls.get()
                if first is None:
                    return
                group.append(first)
                stop = _take(calls, group)
            last = time.monotonic()
            try:
                results = self.journal._run_group(group)
            except BaseException as exc:  # a bug: every caller hears of it, none hangs
                results = [(False, exc)] * len(group)
            for call, result in zip(group, results, strict=True):
                call.result = result
            loops = {call.loop for call in group}
            for loop in loops:
                # One wake-up of each loop per group, not one per record.
                mine = group if len(loops) == 1 else [c for c in group if c.loop is loop]
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    loop.call_soon_threadsafe(_settle, mine)
            # Busy: the group gathered several callers, or more came while it
            # was committed. One caller alone is not kept waiting.
            busy = len(group) > 1 or not calls.empty()
            if stop:
                return


def _take(calls: queue.SimpleQueue[_Step[Any] | None], group: list[_Step[Any]]) -> bool:
    """Move the calls waiting in ``calls`` into ``group`` (up to _MAX_GROUP); True at the end."""
    while len(group) < _MAX_GROUP:
        try:
            more = calls.get_nowait()
        except queue.Empty:
            return False
        if more is None:
            return True
        group.append(more)
    return False


def _settle(calls: list[_Step[Any]]) -> None:
    for call in calls:
        ok, value = call.result
        call.settled = True
        if call.fate is not None:
            call.fate.set_result(None)
        if call.future.done():  # its caller was cancelled
            continue
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)


async def _finish(future: asyncio.Future[_T]) -> _T:
    """Wait for ``future`` even if cancelled meanwhile; then raise the cancellation."""
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            cancelled = exc
        except BaseException:  # the future's own error: result() raises it
            pass
    if cancelled is not None:
        if not future.cancelled():
            future.exception()  # retrieved: the caller hears of its cancellation instead
        raise cancelled
    return future.result()


def _close_opened(opening: asyncio.Future[Journal]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _connect(name: str, *, exclusive: bool) -> sqlite3.Connection:
    """Make one attempt at opening ``name`` as a journal and return the connection.

    Raises:
        sqlite3.Error: Only when the file is busy (locked by another
            connection); the connection is closed, so a new attempt can win.
        JournalError: For every other failure.
    """
    fresh = _create_private(name)
    try:
        # No busy wait inside an attempt (timeout=0): see _prepare for why the
        # waiting is done by closing and trying again instead.
        connection = sqlite3.connect(
            name, timeout=0.0, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {name!r}: {exc}", path=name) from exc
    try:
        if exclusive:
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")
        if fresh:
            # The file was made empty just now, by this call: a journal to be.
            # Its layout is written in the write-ahead log and without fsync:
            # in the usual (rollback) mode, making it and then switching to
            # the log cost eight fsyncs, 5-30 ms before a batch could start.
            # A SIGKILL cannot damage the file this way (the writes are in
            # the operating system's cache); a power cut in that millisecond
            # could, and the journal has no record yet then.
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("PRAGMA journal_mode=WAL")
        _prepare(connection, name)
        # The write-ahead log is switched on only once the file is known to
        # be a journal: someone else's database is never converted. With
        # synchronous=NORMAL a commit appends to the log without fsync;
        # the log's frames are then in the operating system's page cache,
        # which outlives the process, so a SIGKILL loses no commit (a power
        # cut may lose the last few, never corrupt the file).
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        # From here on, a short wait is right: with exclusive=False, other
        # connections hold the write lock for one short transaction at a time.
        connection.execute(f"PRAGMA busy_timeout={round(_BUSY_TIMEOUT * 1000)}")
    except sqlite3.Error as exc:
        connection.close()
        if _is_busy(exc):
            raise
        if _primary_code(exc) == sqlite3.SQLITE_NOTADB:
            raise JournalError(f"{name!r} is not a banana_async journal: {exc}", path=name) from exc
        # A full disk, an I/O error, a file that cannot be opened: the file
        # may well be a journal, so say what failed rather than "not one".
        raise JournalError(f"cannot open journal {name!r}: {exc}", path=name) from exc
    except BaseException:
        connection.close()
        raise
    return connection


def _create_private(name: str) -> bool:
    """Create the journal file, readable and writable by its owner only, if it is missing.

    Returns True when this call made the file (empty).

    A journal holds prompts and the provider's answers. SQLite would create
    the file with mode 0644 (less the umask), and its ``-wal`` and ``-shm``
    files take the mode of the database file: made here first with 0600,
    all three are private. A file that exists keeps the mode it has: its
    owner chose it.
    """
    if name in ("", ":memory:"):
        return False
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        # It exists, or it cannot be made: sqlite3.connect says what is wrong.
        return False
    os.close(fd)
    return True


def _is_busy(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    # The low byte is the primary code (SQLITE_BUSY_RECOVERY is still busy).
    return None if code is None else int(code) & 0xFF


def _prepare(connection: sqlite3.Connection, name: str) -> None:
    """Check that the file is a journal of this version, or make an empty file one.

    Everything happens inside one ``BEGIN EXCLUSIVE``, taken before the file is
    read at all. In exclusive locking mode a connection that failed to get a
    lock keeps the SHARED lock it took on the way, so two openers that both
    read first would each wait for the other and both fail. Taken first, the
    exclusive lock goes to one opener; the others fail at once (no busy wait)
    and :meth:`~banana_async.Journal.open` closes them, which releases what they held.
    Refusals happen inside the transaction and roll it back, so a foreign file
    is left exactly as it was.
    """
    connection.execute("BEGIN EXCLUSIVE")
    try:
        tables = _tables(connection)
        if not tables:
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("application", _APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
            )
            tables = _tables(connection)
        _check(connection, name, tables)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _check(connection: sqlite3.Connection, name: str, tables: set[str]) -> None:
    if "meta" not in tables:
        raise JournalError(
            f"{name!r} is an SQLite database but not a banana_async journal", path=name
        )
    meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("application") != _APPLICATION:
        raise JournalError(
            f"{name!r} is an SQLite database but not a banana_async journal", path=name
        )
    version = str(meta.get("schema_version"))
    if not version.isdigit() or int(version) != SCHEMA_VERSION:
        newer = version.isdigit() and int(version) > SCHEMA_VERSION
        raise JournalError(
            f"journal {name!r} has layout version {version}"
            + (", written by a newer banana_async; upgrade to read it" if newer else "")
            + f" (this banana_async reads version {SCHEMA_VERSION})",
            path=name,
        )
    if "entries" not in tables:
        raise JournalError(f"journal {name!r} is damaged: it has no entries table", path=name)


def _tables(connection: sqlite3.Connection) -> set[str]:
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {str(name) for (name,) in rows}
