"""A crash-safe record of a batch of generations, in one SQLite file.

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

Every ``record_*`` method commits before it returns, so the order of the
records on disk is the order of the calls. The file uses SQLite's
write-ahead log with ``synchronous=NORMAL``: a commit is a ``write()`` into
the log, which survives the process being killed (even by ``SIGKILL``),
though not necessarily a power cut or an operating-system crash.

::

    with Journal.open("batch.sqlite") as journal:
        journal.record_sending(0, request)
        task = await client.create(request)
        journal.record_created(0, task)
"""

from __future__ import annotations

import enum
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import attrs

from banana_async._convert import CONVERTER
from banana_async.errors import InvalidRequestError
from banana_async.models import GenerationRequest, Task, TaskStatus

__all__ = [
    "SCHEMA_VERSION",
    "EntryState",
    "Journal",
    "JournalEntry",
    "JournalProvider",
    "canonical_request",
]

# Still 1 with the "provider" key of meta (Journal.bind_provider): meta is a
# key/value table, so a new key needs no new layout. Older versions of this
# module open such a journal and ignore the key; this one opens journals
# without it and records it at the first bind.
SCHEMA_VERSION: Final = 1
"""The version of the file layout this module reads and writes."""

_APPLICATION: Final = "banana_async.journal"

# Waiting longer for a lock is pointless: an open journal keeps its lock until
# it is closed (see ``exclusive`` in :meth:`Journal.open`).
_BUSY_TIMEOUT: Final = 1.0

# Longest pause between two attempts of Journal.open on a busy file. Random,
# so that openers that collided do not collide again in step.
_RETRY_PAUSE: Final = 0.02

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


class EntryState(enum.StrEnum):
    """Where one input of a batch is; stored as its value in the journal."""

    SENDING = "sending"
    """Recorded just before the create request; found on resume, the create's fate is unknown."""
    CREATED = "created"
    """The provider created the task (its id is known); it has not finished yet."""
    COMPLETED = "completed"
    """The task completed; the image path is recorded once it is downloaded."""
    FAILED = "failed"
    """The task ended ``failed`` at the provider."""
    ERROR = "error"
    """The input failed and certainly nothing was created (invalid input, a 400, never
    sent); a resumed batch tries it again, as that cannot bill a task twice."""
    UNCONFIRMED = "unconfirmed"
    """A create failed in a way that may have created (and billed) a task."""

    @property
    def final(self) -> bool:
        """True for states a resumed batch reports as they are, without any request.

        :attr:`CREATED` (poll the task again), :attr:`ERROR` (create it again:
        nothing was created) and :attr:`SENDING` (unknown: report it as
        unconfirmed, or resend it on request) are not final.
        """
        return self not in (EntryState.SENDING, EntryState.CREATED, EntryState.ERROR)


_TERMINAL: Final = frozenset({EntryState.COMPLETED, EntryState.FAILED})


@attrs.frozen
class JournalEntry:
    r"""What the journal holds about one input of a batch.

    Attributes:
        index: The input's position in the batch (0-based).
        state: Where the input is.
        request: The request, or None when the input could not be made into one.
        raw_input: The input as text when it could not be made into a request.
        task_id: The provider's task id, once the create answered.
        task: The task as last recorded (after the create, or when it ended).
        error: The error message (a failed task's message, or the exception's).
        error_type: The class name of that error, e.g. ``BadRequestError``.
        path: Where the image was saved, once downloaded.
        updated_at: When the entry was last written (``time.time()``).

    Strings from outside may hold lone surrogates (``"\ud800"`` in a JSON
    answer decodes to one; so does an undecodable byte in a POSIX file
    name), which SQLite cannot store as text. ``task`` and ``task_id`` keep
    them exactly. ``raw_input``, ``error``, ``error_type`` and ``path`` keep
    them escaped, as ``text.encode("utf-8", "backslashreplace")`` does: the
    lone surrogate U+D800 becomes the six characters ``\ud800``, and every
    other character is kept. The recording methods return the escaped text
    too, so an entry reads back as it was returned. A ``path`` recorded that
    way no longer names the file: a resumed batch downloads that image again.
    """

    index: int
    state: EntryState
    request: GenerationRequest | None = None
    raw_input: str | None = None
    task_id: str | None = None
    task: Task | None = None
    error: str | None = None
    error_type: str | None = None
    path: str | None = None
    updated_at: float = 0.0


@attrs.frozen
class JournalProvider:
    """The provider a journal's tasks belong to.

    Recorded by :meth:`~banana_async.Journal.bind_provider`, as it was given.

    Attributes:
        dialect: The dialect's name, e.g. ``nano``.
        create_base_url: The base URL that creates are sent to.
        query_base_url: The base URL that status queries are sent to.
    """

    dialect: str
    create_base_url: str
    query_base_url: str

    def __str__(self) -> str:
        return f"{self.dialect!r} (create {self.create_base_url}, query {self.query_base_url})"

    def same_as(self, other: JournalProvider) -> bool:
        """Tell whether both name the same provider, however spelled.

        Dialect names compare without case or surrounding blanks (as the
        client reads them). URLs compare with the scheme and host in any case
        and without trailing slashes, so ``https://Host/x/`` and
        ``https://host/x`` are the same; the rest of the URL (path, port,
        query) must be equal.
        """
        return _normal_provider(self) == _normal_provider(other)


def _normal_provider(provider: JournalProvider) -> tuple[str, str, str]:
    return (
        provider.dialect.strip().lower(),
        _normal_url(provider.create_base_url),
        _normal_url(provider.query_base_url),
    )


def _normal_url(url: str) -> str:
    parts = urlsplit(url.strip())
    userinfo, at, host = parts.netloc.rpartition("@")
    return urlunsplit(
        (
            parts.scheme.lower(),
            userinfo + at + host.lower(),
            parts.path.rstrip("/"),
            parts.query,
            parts.fragment,
        )
    )


def canonical_request(request: GenerationRequest) -> str:
    """Return the canonical JSON text of a request (sorted keys, no whitespace).

    Equal requests give equal texts: the journal compares inputs by it, and a
    batch may hash the texts of all its inputs into a :attr:`~banana_async.Journal.fingerprint`.
    """
    return _dumps(CONVERTER.unstructure(request, GenerationRequest))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _dumps_task(task: Task) -> str:
    # ensure_ascii=True: a task comes from the provider's JSON and may hold
    # lone surrogates ("\ud800"), which SQLite cannot store as text; as \u
    # escapes they round-trip exactly. Older rows (raw UTF-8) load the same.
    # Requests keep _dumps: their canonical text must not change.
    return json.dumps(
        CONVERTER.unstructure(task, Task), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )


def _storable(text: str | None) -> str | None:
    r"""Return ``text`` as the plain text columns keep it: encodable as UTF-8.

    Lone surrogates become ``\uXXXX`` escapes; every other character,
    backslashes included, is kept as it is (see :class:`JournalEntry`).
    """
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"a journal index is an int >= 0, not {index!r}")


class Journal:
    """The journal of one batch, kept in one SQLite file.

    Open it with :meth:`open` and close it with :meth:`close` or a ``with``
    block. Each method runs one short transaction and commits before it
    returns. A method that would move an entry backwards (out of
    ``COMPLETED`` or ``FAILED``, or from a final state to a new create)
    raises :class:`ValueError` and changes nothing; the one way back is
    :meth:`mark_resend`, for ``SENDING`` and ``UNCONFIRMED`` entries only.

    Methods are synchronous and fast enough to call from an event loop. A
    lock makes them safe to call from several threads. They take any ``str``,
    lone surrogates included (see :class:`JournalEntry` for how such text is
    stored).

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

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        """Wrap an open and checked connection; use :meth:`open` instead."""
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, exclusive: bool = True) -> Self:
        """Open the journal at ``path``, creating the file if it does not exist.

        The parent directory must exist. An empty SQLite file (or a new one)
        becomes a journal; any other SQLite database, or any other file, is
        refused without being changed.

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
            InvalidRequestError: The file cannot be opened, is not a journal,
                was written by a newer version of ``banana_async``, or is in
                use by another open journal.
        """
        name = os.fspath(path)
        deadline = time.monotonic() + _BUSY_TIMEOUT
        while True:
            try:
                return cls(_connect(name, exclusive=exclusive), name)
            except sqlite3.Error as exc:  # _connect lets only "busy" through
                if time.monotonic() >= deadline:
                    raise InvalidRequestError(
                        f"journal {name!r} is in use by another open journal "
                        "(is the same batch running twice?)"
                    ) from exc
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
        _check_index(index)
        with self._transaction() as connection:
            return self._get(connection, index)

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
        _check_index(index)
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT request, raw_input FROM entries WHERE idx = ?", (index,)
            ).fetchone()
        if row is None:
            return False
        stored_request, stored_raw = row
        if request is None:
            return stored_request is None and stored_raw == _storable(raw_input)
        return stored_request is not None and stored_request == canonical_request(request)

    @property
    def fingerprint(self) -> str | None:
        """A text identifying the batch's inputs (chosen by the batch), or None.

        Setting it commits at once; a write that fails raises
        :class:`sqlite3.Error` and changes nothing (see :class:`Journal`).
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
            InvalidRequestError: Another provider is recorded; the message
                names both. Nothing is written.
            sqlite3.Error: The first bind could not be written (a full
                disk, an I/O error); nothing was changed. See :class:`Journal`.
        """
        given = JournalProvider(dialect, create_base_url, query_base_url)
        with self._transaction(write=True) as connection:
            recorded = self._provider(connection)
            if recorded is None:
                value = json.dumps(attrs.asdict(given), sort_keys=True, ensure_ascii=True)
                connection.execute("INSERT INTO meta (key, value) VALUES ('provider', ?)", (value,))
            elif not recorded.same_as(given):
                raise InvalidRequestError(
                    f"journal {self.path!r} belongs to another provider: it was recorded "
                    f"for {recorded}, not {given}; its task ids mean nothing there"
                )

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
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        with self._transaction(write=True) as connection:
            entry = self._expect_new_or(
                connection, index, (EntryState.ERROR,), "record a new create"
            )
            return self._write(
                connection,
                JournalEntry(index, EntryState.SENDING, request=request, updated_at=time.time()),
                insert=entry is None,
            )

    def record_created(self, index: int, task: Task) -> JournalEntry:
        """Record the task the create returned (or a newer snapshot of it).

        Raises:
            ValueError: The entry is not ``SENDING`` or ``CREATED``, or it holds
                another task id.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        with self._transaction(write=True) as connection:
            entry = self._expect(
                connection, index, (EntryState.SENDING, EntryState.CREATED), "record its task"
            )
            self._check_task_id(entry, task)
            return self._write(
                connection,
                attrs.evolve(
                    entry,
                    state=EntryState.CREATED,
                    task_id=task.id,
                    task=task,
                    error=None,
                    error_type=None,
                    updated_at=time.time(),
                ),
            )

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
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        if not task.status.terminal:
            raise ValueError(f"task {task.id} has not finished (status {task.status.value!r})")
        completed = task.status is TaskStatus.COMPLETED
        state = EntryState.COMPLETED if completed else EntryState.FAILED
        with self._transaction(write=True) as connection:
            entry = self._expect(
                connection, index, (EntryState.SENDING, EntryState.CREATED, state), "record its end"
            )
            self._check_task_id(entry, task)
            return self._write(
                connection,
                attrs.evolve(
                    entry,
                    state=state,
                    task_id=task.id,
                    task=task,
                    error=None if completed else (task.error or f"task {task.id} failed"),
                    error_type=None if completed else "TaskFailedError",
                    updated_at=time.time(),
                ),
            )

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
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        with self._transaction(write=True) as connection:
            entry = self._expect_new_or(
                connection, index, (EntryState.SENDING, EntryState.ERROR), "record an error"
            )
            base = entry or JournalEntry(index, EntryState.ERROR)
            return self._write(
                connection,
                attrs.evolve(
                    base,
                    state=EntryState.ERROR,
                    request=request if request is not None else base.request,
                    raw_input=raw_input if raw_input is not None else base.raw_input,
                    error=_error_text(error),
                    error_type=type(error).__name__,
                    updated_at=time.time(),
                ),
                insert=entry is None,
            )

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
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        with self._transaction(write=True) as connection:
            entry = self._expect(
                connection, index, (EntryState.SENDING,), "record an unconfirmed create"
            )
            return self._write(
                connection,
                attrs.evolve(
                    entry,
                    state=EntryState.UNCONFIRMED,
                    request=request,
                    task_id=task_id if task_id is not None else entry.task_id,
                    error=_error_text(error),
                    error_type=type(error).__name__,
                    updated_at=time.time(),
                ),
            )

    def record_download(self, index: int, path: str | os.PathLike[str]) -> JournalEntry:
        """Record where the image of a ``COMPLETED`` entry was saved.

        Recording again replaces the path; an error noted before is cleared.

        Raises:
            ValueError: The entry is not ``COMPLETED``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        with self._transaction(write=True) as connection:
            entry = self._expect(connection, index, (EntryState.COMPLETED,), "record a download")
            return self._write(
                connection,
                attrs.evolve(
                    entry,
                    path=os.fspath(path),
                    error=None,
                    error_type=None,
                    updated_at=time.time(),
                ),
            )

    def note_error(self, index: int, error: BaseException) -> JournalEntry:
        """Keep an error on an entry without changing its state.

        For failures that leave the entry where it is: a wait that timed out
        (still ``CREATED``, polled again on resume) or a download that failed
        (still ``COMPLETED``, without a path).

        Raises:
            ValueError: Nothing is recorded for ``index``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        with self._transaction(write=True) as connection:
            entry = self._expect(connection, index, tuple(EntryState), "note an error")
            return self._write(
                connection,
                attrs.evolve(
                    entry,
                    error=_error_text(error),
                    error_type=type(error).__name__,
                    updated_at=time.time(),
                ),
            )

    def mark_resend(self, index: int) -> None:
        """Forget a ``SENDING`` or ``UNCONFIRMED`` entry so that it is created again.

        The provider may already have created (and billed) a task for it:
        call this only when the user asked to resend unconfirmed creates.

        Raises:
            ValueError: The entry is not ``SENDING`` or ``UNCONFIRMED``.
            sqlite3.Error: The write failed (a full disk, an I/O error) and
                changed nothing; see :class:`Journal`.
        """
        _check_index(index)
        with self._transaction(write=True) as connection:
            self._expect(
                connection, index, (EntryState.SENDING, EntryState.UNCONFIRMED), "mark it to resend"
            )
            connection.execute("DELETE FROM entries WHERE idx = ?", (index,))

    # -- internals -----------------------------------------------------------

    @contextmanager
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

    def _get(self, connection: sqlite3.Connection, index: int) -> JournalEntry | None:
        row = connection.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE idx = ?", (index,)
        ).fetchone()
        return None if row is None else self._entry(row)

    def _expect_new_or(
        self,
        connection: sqlite3.Connection,
        index: int,
        allowed: tuple[EntryState, ...],
        action: str,
    ) -> JournalEntry | None:
        """Return the entry of ``index`` (None if there is none) if its state is allowed."""
        entry = self._get(connection, index)
        if entry is not None and entry.state not in allowed:
            raise _illegal(index, entry, action)
        return entry

    def _expect(
        self,
        connection: sqlite3.Connection,
        index: int,
        allowed: tuple[EntryState, ...],
        action: str,
    ) -> JournalEntry:
        """Return the entry of ``index`` if it exists and its state is allowed."""
        entry = self._get(connection, index)
        if entry is None or entry.state not in allowed:
            raise _illegal(index, entry, action)
        return entry

    @staticmethod
    def _check_task_id(entry: JournalEntry, task: Task) -> None:
        if entry.task_id is not None and entry.task_id != task.id:
            raise ValueError(f"input {entry.index} already has task {entry.task_id}, not {task.id}")

    def _write(
        self, connection: sqlite3.Connection, entry: JournalEntry, *, insert: bool = False
    ) -> JournalEntry:
        """Store ``entry`` and return it as it now reads back (see :class:`JournalEntry`)."""
        entry = attrs.evolve(
            entry,
            raw_input=_storable(entry.raw_input),
            error=_storable(entry.error),
            error_type=_storable(entry.error_type),
            path=_storable(entry.path),
        )
        values = (
            entry.state.value,
            None if entry.request is None else canonical_request(entry.request),
            entry.raw_input,
            _storable(entry.task_id),  # read back from the task's JSON, exactly
            None if entry.task is None else _dumps_task(entry.task),
            entry.error,
            entry.error_type,
            entry.path,
            entry.updated_at,
            entry.index,
        )
        if insert:
            connection.execute(
                "INSERT INTO entries (state, request, raw_input, task_id, task, error,"
                " error_type, path, updated_at, idx) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        else:
            connection.execute(
                "UPDATE entries SET state = ?, request = ?, raw_input = ?, task_id = ?, task = ?,"
                " error = ?, error_type = ?, path = ?, updated_at = ? WHERE idx = ?",
                values,
            )
        return entry

    def _entry(self, row: tuple[Any, ...]) -> JournalEntry:
        index, state, request, raw_input, task_id, task, error, error_type, path, updated = row
        try:
            stored_task = None if task is None else CONVERTER.structure(json.loads(task), Task)
            return JournalEntry(
                index=int(index),
                state=EntryState(state),
                request=None
                if request is None
                else CONVERTER.structure(json.loads(request), GenerationRequest),
                raw_input=raw_input,
                # The column is escaped text; the task's JSON has the exact id
                # (every write that sets the id sets the task with it).
                task_id=task_id if stored_task is None else stored_task.id,
                task=stored_task,
                error=error,
                error_type=error_type,
                path=path,
                updated_at=float(updated),
            )
        except Exception as exc:
            raise self._corrupt(f"entry {index} cannot be read ({exc})") from exc

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

    def _corrupt(self, detail: str) -> InvalidRequestError:
        return InvalidRequestError(f"journal {self.path!r} is damaged: {detail}")


def _illegal(index: int, entry: JournalEntry | None, action: str) -> ValueError:
    shown = "nothing recorded" if entry is None else f"state {entry.state.value!r}"
    return ValueError(f"cannot {action} for input {index}: it has {shown}")


def _connect(name: str, *, exclusive: bool) -> sqlite3.Connection:
    """Make one attempt at opening ``name`` as a journal and return the connection.

    Raises:
        sqlite3.Error: Only when the file is busy (locked by another
            connection); the connection is closed, so a new attempt can win.
        InvalidRequestError: For every other failure.
    """
    try:
        # No busy wait inside an attempt (timeout=0): see _prepare for why the
        # waiting is done by closing and trying again instead.
        connection = sqlite3.connect(
            name, timeout=0.0, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise InvalidRequestError(f"cannot open journal {name!r}: {exc}") from exc
    try:
        if exclusive:
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")
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
            raise InvalidRequestError(f"{name!r} is not a banana_async journal: {exc}") from exc
        # A full disk, an I/O error, a file that cannot be opened: the file
        # may well be a journal, so say what failed rather than "not one".
        raise InvalidRequestError(f"cannot open journal {name!r}: {exc}") from exc
    except BaseException:
        connection.close()
        raise
    return connection


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
    and :meth:`Journal.open` closes them, which releases what they held.
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
        raise InvalidRequestError(f"{name!r} is an SQLite database but not a banana_async journal")
    meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("application") != _APPLICATION:
        raise InvalidRequestError(f"{name!r} is an SQLite database but not a banana_async journal")
    version = str(meta.get("schema_version"))
    if not version.isdigit() or int(version) != SCHEMA_VERSION:
        newer = version.isdigit() and int(version) > SCHEMA_VERSION
        raise InvalidRequestError(
            f"journal {name!r} has layout version {version}"
            + (", written by a newer banana_async; upgrade to read it" if newer else "")
            + f" (this banana_async reads version {SCHEMA_VERSION})"
        )
    if "entries" not in tables:
        raise InvalidRequestError(f"journal {name!r} is damaged: it has no entries table")


def _tables(connection: sqlite3.Connection) -> set[str]:
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {str(name) for (name,) in rows}
