"""One batch shared by many workers: a journal in Postgres, with claims on leases.

Any number of worker processes, on any machines, run one batch together when
they are given the same inputs and the same ``journal="postgresql://..."``
and ``batch="NAME"``. Each input is created once across all of them, and a
worker that dies leaves its inputs to the others. Needs ``asyncpg`` (the
``postgres`` extra: ``pip install 'banana-async[postgres]'``), imported only
when a store is opened.

How workers share the inputs (the design a reviewer should check):

- **Claims are leases, not row locks.** An input is claimed by writing the
  worker's id into its row (``owner``) in a short transaction; the claim
  lasts while the worker's own row in ``banana_workers`` is alive, that is
  while its ``lease_until`` lies ahead of the database's clock. A live worker
  renews its lease every third of its length (one UPDATE of one row, however
  many inputs it holds). A ``SELECT ... FOR UPDATE SKIP LOCKED`` held for a
  whole task would need one open transaction, and one connection, per task
  in flight (a task may take minutes), and nothing recorded inside it would
  be durable before its commit; the journal's promise is the opposite (a
  record returns once it is durable). ``SKIP LOCKED`` is used only inside
  the short statement that takes over orphaned inputs, so that two workers
  looking for work at once never pick the same row.
- **Every record is fenced.** A record is one UPDATE whose WHERE holds the
  transition table's check (:func:`~banana_async.journal.sources`), the
  claim (``owner`` is this worker) and the worker's live lease, so a worker
  that was paused past its lease (and whose inputs another worker took)
  cannot overwrite anything: its record fails with
  :class:`~banana_async.JournalError` and its batch stops creating. Time is
  always the database's ``now()``, never a worker's clock.
- **A worker that dies** (SIGKILL, a lost machine) stops renewing; once its
  lease has expired, its unsettled inputs are orphans, which the other
  workers take over once they have read all their inputs (they wait for
  the batch while another worker still holds inputs). What a taker does
  with each follows the one table, exactly as a resumed SQLite batch does:
  a ``CREATED`` task is polled, never created again; a ``SENDING`` entry
  (a create in flight at the death) is reported as unconfirmed; an input
  with nothing recorded, or ``ERROR``, is created.
- **Runs.** The batch's ``run`` number goes up when a worker joins a batch
  in which no worker is alive. An input is *settled* once a worker handed
  its outcome to its caller; within one run no other worker touches it, so
  each worker yields only the outcomes of the inputs it settled. A worker
  that starts a new run later resumes the batch as SQLite does: it reports
  finished inputs from the journal, polls unfinished tasks and creates again
  what certainly was not created.
- A worker that stops cleanly (its batch ended, or it was cancelled) gives
  its unsettled inputs back at once, and leaves the batch's worker list.

Every worker must read the same inputs in the same order. A claim compares
the worker's input with what the batch recorded at that index, whichever
worker recorded it and whether or not another worker holds it, and records
it when nothing is: an input that differs stops the worker with
:class:`~banana_async.JournalError` at the first such index. A worker that
knows its whole input list (:meth:`~banana_async.journal.PostgresStore.check_inputs`) is checked
against the run's before it creates anything.

A statement that loses its connection (a database restart, a failover) is
sent again, with backoff, for as long as the worker's lease lasts; past it
the worker's records fail and its batch stops creating (see the
"When the database goes away" section of the docs' Scaling out page).

Tables (created when missing, under an advisory lock, in the connection's
schema): ``banana_batches`` (one row per batch: the provider, the run
number), ``banana_workers`` (one row per worker: its lease), and
``banana_entries`` (one row per input, keyed by batch and index: the same
columns as the SQLite journal, plus ``owner`` and ``settled_run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs

from banana_async._checks import error_message as error_text
from banana_async._convert import CONVERTER
from banana_async._logging import RAISED_LATER
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
from banana_async.journal.states import EntryState, sources
from banana_async.models import GenerationRequest, Task, TaskStatus, request_from

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_LEASE",
    "LeaseWait",
    "PostgresStore",
    "has_password",
    "inputs_fingerprint",
    "is_postgres_url",
    "redact_url",
]

logger = logging.getLogger("banana_async")
_T = TypeVar("_T")

DEFAULT_LEASE: Final = 30.0
"""Seconds a worker's claims outlive its last renewal (renewed every third of it)."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds a new connection may take to be answered (asyncpg's own default is 60)."""

# Seconds one statement may take before its connection counts as lost (and
# the statement is sent again on a new one, while the lease lasts): every
# statement is short, so a database that takes this long is not answering.
_STATEMENT_TIMEOUT: Final = 20.0

# Serialises the creation of the tables and the joining of workers: two
# workers creating the tables at once would collide in the catalogue.
_LOCK_KEY: Final = 0x62616E616E61  # "banana"

# How many batch names an error about an unknown one lists (the newest first).
_NAMES_SHOWN: Final = 10

# How often a worker waiting for other workers' inputs says so again (at INFO).
_WAIT_NOTE_EVERY: Final = 10.0

# The first and the longest pause between two tries to reach a database
# that went away (a restart, a failover, a dropped network).
_RETRY_FIRST: Final = 0.2
_RETRY_MOST: Final = 2.0

# How often a worker with nothing left to claim looks again while other
# workers still hold inputs of the batch (at most; a third of the lease if shorter).
_SWEEP_PAUSE: Final = 1.0

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS banana_batches (
        name TEXT PRIMARY KEY,
        provider TEXT,
        run BIGINT NOT NULL DEFAULT 0,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS banana_workers (
        batch TEXT NOT NULL REFERENCES banana_batches (name) ON DELETE CASCADE,
        id TEXT NOT NULL,
        label TEXT NOT NULL,
        run BIGINT NOT NULL,
        lease_until TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (batch, id)
    )""",
    """CREATE TABLE IF NOT EXISTS banana_entries (
        batch TEXT NOT NULL REFERENCES banana_batches (name) ON DELETE CASCADE,
        idx BIGINT NOT NULL CHECK (idx >= 0),
        state TEXT,
        request TEXT,
        raw_input TEXT,
        task_id TEXT,
        task TEXT,
        error TEXT,
        error_type TEXT,
        path TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        owner TEXT,
        settled_run BIGINT,
        PRIMARY KEY (batch, idx)
    )""",
)

# Added after the first release of the tables: a table made by it gains them.
_MIGRATIONS: Final = (
    "ALTER TABLE banana_batches ADD COLUMN IF NOT EXISTS inputs TEXT",
    "ALTER TABLE banana_batches ADD COLUMN IF NOT EXISTS inputs_count BIGINT",
    "ALTER TABLE banana_batches ADD COLUMN IF NOT EXISTS inputs_run BIGINT",
)

_COLUMNS: Final = (
    "idx, state, request, raw_input, task_id, task, error, error_type, path, updated_at"
)

# $1 batch, $2 index, $3 updated_at, $4 states allowed before, $5 this worker.
_FENCE: Final = (
    "owner = $5 AND EXISTS (SELECT 1 FROM banana_workers w"
    " WHERE w.batch = $1 AND w.id = $5 AND w.lease_until > now())"
)

# An owner whose lease has run out (or who left) holds nothing.
_ORPHAN: Final = (
    "(e.owner IS NULL OR NOT EXISTS (SELECT 1 FROM banana_workers w"
    " WHERE w.batch = e.batch AND w.id = e.owner AND w.lease_until > now()))"
)


def is_postgres_url(journal: object) -> bool:
    """Tell whether ``journal`` is a Postgres URL (``postgresql://`` or ``postgres://``)."""
    return isinstance(journal, str) and journal.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` without its password, as messages and logs may show it."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    # asyncpg also takes the password as a query parameter.
    query = "&".join(
        "password=***" if pair.lower().startswith("password=") else pair
        for pair in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def inputs_fingerprint(
    inputs: Iterable[object], defaults: Mapping[str, Any] | None = None
) -> tuple[str, int]:
    """A digest of a whole input list as a batch reads it, and how many inputs it has.

    Each input counts as the request a batch makes of it (a prompt with
    ``defaults``, as ``generate_many`` is given them), so the same file read
    with another ``size`` gives another digest; an input that is no valid
    request counts as its ``repr``.
    """
    digest = hashlib.sha256()
    count = 0
    fields = dict(defaults or {})
    for item in inputs:
        # As the batch builds its requests: a request as it is, a prompt with the defaults.
        try:
            if isinstance(item, GenerationRequest):
                text = canonical_request(item)
            elif isinstance(item, str):
                text = canonical_request(request_from(item, **fields))
            else:
                text = "!" + repr(item)[:1000]
        except Exception:  # an invalid input is an input too
            text = "!" + repr(item)[:1000]
        digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
        count += 1
    return f"sha256:{digest.hexdigest()}", count


def has_password(url: str) -> bool:
    """Whether a Postgres URL carries a password (in its user part or as a parameter)."""
    parts = urlsplit(url)
    return parts.password is not None or any(
        pair.lower().startswith("password=") for pair in parts.query.split("&")
    )


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is the database or the way to it going away, not a refused statement.

    Such a statement may be tried again on a new connection: it either never
    ran or, if its commit got through before the answer was lost, is found
    done on the next try (see :meth:`PostgresStore._update`).
    """
    import asyncpg  # noqa: PLC0415 - loaded by open() already

    # A statement's failure may come out as another one, raised by what ran
    # on the broken connection after it (the transaction's ROLLBACK, the
    # pool's reset): the lost connection is then in the chain.
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if cause is not exc and _connection_lost(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, asyncpg.InternalClientError) and "cannot switch to state" in str(exc):
        # The server's last word on its way down (a FATAL "terminating
        # connection") arrived between two statements: asyncpg leaves the
        # connection waiting for a "ready" that never comes, and refuses the
        # next statement on it (a COMMIT, a ROLLBACK, the pool's reset)
        # with this. The connection is dropped by the pool; the
        # transaction died with the server's session, so it is tried again.
        return True
    if isinstance(exc, OSError):  # refused, reset, timed out (TimeoutError is one)
        return True
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CrashShutdownError
        | asyncpg.exceptions.CannotConnectNowError,
    ):
        return True
    # asyncpg's own word for a connection closed under it.
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def _why_lost(exc: BaseException, timeout: float) -> str:
    """What happened to the way to the database, in words (not asyncpg's internals).

    Args:
        exc: What the statement (or the connect) raised; :func:`_connection_lost` is true of it.
        timeout: The seconds it was given to answer (the connect's or the statement's).
    """
    import asyncpg  # noqa: PLC0415 - loaded by open() already

    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncpg.exceptions.OperatorInterventionError):
        # The server's own word (SQLSTATE class 57): "terminating connection due to administrator
        # command", "the database system is shutting down".
        return str(exc).split("\n", 1)[0] or "the server closed the connection"
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError) and exc.strerror:
        return exc.strerror  # no route to host, a name that does not resolve
    # Reset, closed mid-statement, "cannot switch to state ...": all the same to a user.
    return "the connection broke"


def _password_hint(exc: BaseException) -> str:
    """A hint after a refused password (or a missing one), else ''."""
    import asyncpg  # noqa: PLC0415 - loaded by open() already

    # asyncpg's own refusal to connect without one says "password" too.
    if isinstance(exc, asyncpg.InvalidPasswordError) or "password" in str(exc).lower():
        return (
            " (asyncpg reads the password from $PGPASSWORD or ~/.pgpass, or from the URL, "
            "postgresql://USER:PASSWORD@HOST/DB, where every user of the machine can read it "
            "with ps; check the user name in the URL too)"
        )
    return ""


class _Retrying:
    """Runs each statement on the pool, trying again while the database is away.

    Attributes:
        retried: Whether a statement was sent again after a lost connection
            (its first try may have committed).
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.retried = False

    async def _run(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        result, retried = await self._store._retrying(call)
        self.retried = self.retried or retried
        return result

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run(lambda connection: connection.fetchval(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._run(lambda connection: connection.fetchrow(query, *args))

    async def fetch(self, query: str, *args: Any) -> Any:
        return await self._run(lambda connection: connection.fetch(query, *args))

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._run(lambda connection: connection.execute(query, *args))


def _text(value: str | None) -> str | None:
    """Text as a Postgres column keeps it: no lone surrogates (see JournalEntry), no NUL."""
    stored = storable(value)
    return None if stored is None else stored.replace("\x00", "\\x00")


def _states(after: EntryState | None) -> tuple[list[str], bool]:
    """The states ``after`` may follow, as values, and whether "nothing recorded" is one."""
    before = sources(after)
    return sorted(state.value for state in before if state is not None), None in before


@attrs.frozen
class LeaseWait:
    """Unsettled inputs of another worker, which this worker waits for (see ``waiting_for``).

    Attributes:
        worker: The other worker's id.
        inputs: How many of the batch's unsettled inputs it holds.
        lease_until: When its lease runs out unless it renews it, on this
            machine's :func:`time.monotonic` clock (as of the last look).
    """

    worker: str
    inputs: int
    lease_until: float

    def left(self, now: float | None = None) -> float:
        """Seconds until the lease runs out (0 once it has), as of ``now`` (default: now)."""
        return max(0.0, self.lease_until - (time.monotonic() if now is None else now))


class PostgresStore:
    """A :class:`~banana_async.journal.JournalStore` in Postgres, shared by many workers.

    Each store is one worker of one batch (see the module for the design).
    Open it with :meth:`open`, or hand ``generate_many`` the URL and the
    batch's name and let it open and close one::

        async for outcome in client.generate_many(
            prompts, journal="postgresql://user@db/jobs", batch="posters-2026"
        ):
            ...

    Besides the :class:`~banana_async.journal.JournalStore` methods, it
    claims inputs (:meth:`claim`, :meth:`settle`, :meth:`take_over`; the
    batch engine calls them) and reads the whole batch (:meth:`entries`,
    :meth:`counts`, :meth:`workers`). Every record requires this worker's claim on the input.

    Attributes:
        batch: The batch's name.
        worker: This worker's id (host, process and a random part).
        lease: Seconds the worker's claims outlive its last renewal.
    """

    def __init__(self, pool: Any, url: str, batch: str, worker: str, lease: float) -> None:
        """Use :meth:`open`."""
        self._pool = pool
        self._url = redact_url(url)
        self.batch = batch
        self.worker = worker
        self.lease = lease
        self._run = 0
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        # When this worker's lease runs out at the latest, on this machine's
        # monotonic clock: counted from before the statement that set it.
        self._lease_until = time.monotonic() + lease
        # When the database went away (None: it is there), for the one
        # WARNING and the one INFO of an outage.
        self._down_since: float | None = None
        self._joined = False
        # The inputs this worker claimed and has not settled: a row it owns
        # that is not here was taken by a statement whose answer was lost.
        self._held: set[int] = set()
        # Seconds a new connection may take (open() sets what it was given).
        self._connect_timeout = CONNECT_TIMEOUT
        # Whether the WARNING of the current outage was logged: its end is then one too.
        self._said_lost = False
        # The other workers' inputs take_over() waits for (see waiting_for),
        # and how many inputs it took over from each worker (for its summary).
        self._waiting: tuple[LeaseWait, ...] = ()
        self._taken: Counter[str] = Counter()
        # Set by aclose(): how a wait for the database while closing is told
        # (None: at WARNING), and whether it was.
        self._on_close_wait: Callable[[float], object] | None = None
        self._said_close_wait = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        batch: str,
        lease: float = DEFAULT_LEASE,
        max_connections: int = 10,
        join: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> Self:
        """Connect, create the tables if missing, and join batch ``batch`` as a new worker.

        A store that only reads (``join=False``) creates nothing and needs only
        SELECT on the three tables.

        Args:
            url: A ``postgresql://`` URL, as asyncpg takes it.
            batch: The batch's name; every worker of one batch gives the same.
            lease: Seconds this worker's claims outlive its last renewal: a
                worker that dies gives its inputs up after that long. Keep it
                well above the longest pause a live worker may have (a
                stalled event loop, a slow network).
            max_connections: Most connections this worker opens.
            join: False to only read the batch (:meth:`entries`,
                :meth:`counts`): the store joins as no worker, holds no
                lease, and every record and claim fails. The batch must
                exist.
            connect_timeout: Seconds a new connection may take to be
                answered: a database that accepts connections and never
                answers fails the open after that long.

        Raises:
            JournalError: asyncpg is not installed, the database cannot be
                reached, the batch cannot be joined, or (``join=False``)
                there is no batch of that name: the error lists the names
                there are.
            ValueError: an empty batch name or a lease <= 0.
        """
        if not isinstance(batch, str) or not batch:
            raise ValueError("batch must be a non-empty name")
        if not lease > 0:
            raise ValueError(f"lease must be > 0 seconds, not {lease!r}")
        try:
            import asyncpg  # noqa: PLC0415 - an optional extra, loaded only here
        except ImportError as exc:
            raise JournalError(
                "a Postgres journal needs asyncpg: pip install 'banana-async[postgres]'",
                path=redact_url(url),
            ) from exc
        worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            # No floor of connections: asyncpg would restore it with a traceback
            # logged at every try while the database is away (see _retrying).
            pool = await asyncpg.create_pool(
                url,
                min_size=0,
                max_size=max_connections,
                timeout=connect_timeout,
                command_timeout=_STATEMENT_TIMEOUT,
            )
        except Exception as exc:
            raise JournalError(
                f"cannot connect to the journal {redact_url(url)}: {error_text(exc)}",
                path=redact_url(url),
            ) from exc
        store = cls(pool, url, batch, worker, lease)
        store._connect_timeout = connect_timeout
        try:
            await store._join(join=join)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, Exception) and not isinstance(exc, JournalError):
                # The pool connects on first use: this is where an
                # unreachable database shows.
                hint = _password_hint(exc)
                what = (
                    f"cannot connect to the journal {redact_url(url)}"
                    if _connection_lost(exc) or hint
                    else f"cannot {'join' if join else 'read'} batch {batch!r} in the journal "
                    f"{redact_url(url)}"
                )
                why = error_text(exc) + hint
                if isinstance(exc, TimeoutError):
                    why = (
                        f"no answer within {connect_timeout:g} s (connect_timeout): the server "
                        "accepted the connection but never answered"
                    )
                raise JournalError(f"{what}: {why}", path=store.name) from exc
            raise
        if join:
            store._renewer = asyncio.get_running_loop().create_task(
                store._renew(), name=f"banana_async-journal-lease-{worker}"
            )
        return store

    @classmethod
    async def batch_names(
        cls, url: str, *, limit: int = _NAMES_SHOWN, connect_timeout: float = CONNECT_TIMEOUT
    ) -> list[str]:
        """The names of the batches in the journal at ``url``, the newest first.

        Only reads (SELECT on ``banana_batches``), and creates nothing: a
        database without the tables has no batch.

        Args:
            url: A ``postgresql://`` URL, as asyncpg takes it.
            limit: The most names returned.
            connect_timeout: Seconds the connection may take to be answered.

        Raises:
            JournalError: asyncpg is not installed, or the database cannot be
                reached or read.
        """
        shown = redact_url(url)
        try:
            import asyncpg  # noqa: PLC0415 - an optional extra, loaded only here
        except ImportError as exc:
            raise JournalError(
                "a Postgres journal needs asyncpg: pip install 'banana-async[postgres]'",
                path=shown,
            ) from exc
        try:
            connection = await asyncpg.connect(
                url, timeout=connect_timeout, command_timeout=_STATEMENT_TIMEOUT
            )
        except Exception as exc:
            why = (
                _why_lost(exc, connect_timeout)
                if _connection_lost(exc)
                else error_text(exc) + _password_hint(exc)
            )
            raise JournalError(f"cannot connect to the journal {shown}: {why}", path=shown) from exc
        try:
            if await connection.fetchval("SELECT to_regclass('banana_batches')") is None:
                return []
            rows = await connection.fetch(
                "SELECT name FROM banana_batches ORDER BY created_at DESC LIMIT $1", limit
            )
        except Exception as exc:
            raise JournalError(
                f"cannot list the batches in the journal {shown}: {error_text(exc)}", path=shown
            ) from exc
        finally:
            await connection.close()
        return [str(row["name"]) for row in rows]

    @property
    def name(self) -> str:
        """The journal's URL (without its password) and the batch's name."""
        return f"{self._url} batch {self.batch!r}"

    @property
    def read_only(self) -> bool:
        """True for a store opened with ``join=False``: it reads the batch, and runs none of it."""
        return not self._joined

    @property
    def lease_lost(self) -> bool:
        """Whether this worker's lease ran out (a database away too long, a stalled loop).

        Its records fail from then on, and it creates nothing more: the batch
        is run again (a new run of the same batch) once the database is back.
        """
        return self._joined and self._lease_until <= time.monotonic()

    @property
    def held(self) -> int:
        """How many inputs this worker holds unsettled (what closing it gives back)."""
        return len(self._held)

    @property
    def run(self) -> int:
        """The batch's run this worker joined (see the module)."""
        return self._run

    def __repr__(self) -> str:
        return (
            f"<PostgresStore {self.name} worker {self.worker}{' closed' if self._closed else ''}>"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- joining and the lease ------------------------------------------------------

    async def _join(self, *, join: bool) -> None:
        started = time.monotonic()
        if not join:
            # Reading needs SELECT on the tables and nothing more: no lock,
            # no CREATE (a read-only role has no right to either).
            async with self._pool.acquire() as connection:
                if await connection.fetchval("SELECT to_regclass('banana_batches')") is None:
                    raise JournalError(
                        f"no batch named {self.batch!r} in the journal {self._url} (no batches "
                        "here: it has no banana_batches table in its search path)",
                        path=self.name,
                    )
                run = await connection.fetchval(
                    "SELECT run FROM banana_batches WHERE name = $1", self.batch
                )
                if run is None:
                    raise await self._unknown(connection)
            self._run = int(run)
            return
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            for statement in (*_SCHEMA, *_MIGRATIONS):
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO banana_batches (name) VALUES ($1) ON CONFLICT DO NOTHING", self.batch
            )
            run = await connection.fetchval(
                "SELECT run FROM banana_batches WHERE name = $1 FOR UPDATE", self.batch
            )
            alive = await connection.fetchval(
                "SELECT count(*) FROM banana_workers WHERE batch = $1 AND lease_until > now()",
                self.batch,
            )
            if alive == 0:
                # Nobody is running the batch: this worker starts a new run,
                # which resumes it (see the module).
                run += 1
                await connection.execute(
                    "UPDATE banana_batches SET run = $2 WHERE name = $1", self.batch, run
                )
            # Workers whose lease ran out hold nothing: forget them.
            await connection.execute(
                "DELETE FROM banana_workers WHERE batch = $1 AND lease_until <= now()", self.batch
            )
            await connection.execute(
                "INSERT INTO banana_workers (batch, id, label, run, lease_until)"
                " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
                self.batch,
                self.worker,
                f"pid {os.getpid()} on {socket.gethostname()}",
                run,
                self.lease,
            )
            self._run = int(run)
        self._lease_until = started + self.lease
        self._joined = True

    async def _unknown(self, connection: Any) -> JournalError:
        """The error for a batch name that the database does not know (a typo, mostly)."""
        names = [
            str(row["name"])
            for row in await connection.fetch(
                "SELECT name FROM banana_batches ORDER BY created_at DESC LIMIT $1",
                _NAMES_SHOWN + 1,
            )
        ]
        if not names:
            known = "it has no batch yet"
        else:
            more = ", ..." if len(names) > _NAMES_SHOWN else ""
            known = "its batches: " + ", ".join(names[:_NAMES_SHOWN]) + more
        return JournalError(
            f"no batch named {self.batch!r} in the journal {self._url} ({known})",
            path=self.name,
        )

    async def _renew(self) -> None:
        """Renew this worker's lease every third of it, until the store closes or it runs out."""
        while True:
            await asyncio.sleep(self.lease / 3)
            started = time.monotonic()

            async def renew(connection: Any) -> str:
                result: str = await connection.execute(
                    "UPDATE banana_workers SET lease_until = now() + make_interval(secs => $3)"
                    " WHERE batch = $1 AND id = $2 AND lease_until > now()",
                    self.batch,
                    self.worker,
                    self.lease,
                )
                return result

            try:
                renewed, _ = await self._retrying(renew)
            except JournalError:
                renewed = " 0"  # the database stayed away past the lease
            if renewed.endswith(" 0"):
                logger.error(
                    "journal %s: the lease of worker %s ran out; other workers may take "
                    "its inputs, and it creates nothing more (its records now fail)",
                    self.name,
                    self.worker,
                    # Its next record fails with a JournalError that says so.
                    extra={RAISED_LATER: True},
                )
                self._lease_until = 0.0  # every later statement fails at once
                return
            self._lease_until = started + self.lease

    # -- the protocol -----------------------------------------------------------------

    async def bind_provider(self, dialect: str, create_base_url: str, query_base_url: str) -> None:
        """Tie the batch to one provider, or check that it is the one recorded.

        Raises:
            JournalError: Another provider is recorded for this batch.
        """
        given = JournalProvider(dialect, create_base_url, query_base_url)
        value = json.dumps(
            {
                "dialect": dialect,
                "create_base_url": create_base_url,
                "query_base_url": query_base_url,
            },
            sort_keys=True,
        )

        async def bind(connection: Any) -> str | None:
            recorded: str | None = await connection.fetchval(
                "SELECT provider FROM banana_batches WHERE name = $1 FOR UPDATE", self.batch
            )
            if recorded is None:
                await connection.execute(
                    "UPDATE banana_batches SET provider = $2 WHERE name = $1", self.batch, value
                )
            return recorded

        self._check_open()
        recorded, _ = await self._retrying(bind, transaction=True)
        if recorded is None:
            return
        fields = json.loads(recorded)
        known = JournalProvider(
            str(fields["dialect"]), str(fields["create_base_url"]), str(fields["query_base_url"])
        )
        if not known.same_as(given):
            raise JournalError(
                f"batch {self.batch!r} in {self._url} belongs to another provider: it was "
                f"recorded for {known}, not {given}; its task ids mean nothing there",
                path=self.name,
            )

    async def check_inputs(self, fingerprint: str, count: int) -> None:
        """Check this worker's whole input list against the one of the batch's run.

        The first worker of a run that gives its list records it; every
        later worker of the run must give the same, or stops here, before
        anything is created. A new run (the batch resumed when no worker was
        alive) records its own: a corrected file may resume a batch, as each
        input's own check allows (see :meth:`claim`).

        Args:
            fingerprint: :func:`~banana_async.journal.postgres.inputs_fingerprint` of the inputs.
            count: How many inputs there are.

        Raises:
            JournalError: Another worker of this run gave other inputs.
        """

        async def check(connection: Any) -> None:
            row = await connection.fetchrow(
                "SELECT inputs, inputs_count, inputs_run FROM banana_batches"
                " WHERE name = $1 FOR UPDATE",
                self.batch,
            )
            if row is None:
                raise JournalError(f"journal {self.name}: the batch is gone", path=self.name)
            if row["inputs_run"] == self._run and row["inputs"] is not None:
                if row["inputs"] != fingerprint:
                    raise JournalError(
                        f"journal {self.name}: this worker's inputs ({count}) differ from "
                        f"the ones another worker of this run gave ({row['inputs_count']}): "
                        "every worker of a batch must read the same inputs with the same "
                        "options (file, --size, --model, ...); nothing was created",
                        path=self.name,
                    )
                return
            await connection.execute(
                "UPDATE banana_batches SET inputs = $2, inputs_count = $3, inputs_run = $4"
                " WHERE name = $1",
                self.batch,
                fingerprint,
                count,
                self._run,
            )

        self._check_open()
        await self._retrying(check, transaction=True)

    async def get(self, index: int) -> JournalEntry | None:
        """Return the entry of input ``index``, or None if nothing is recorded."""
        check_index(index)
        async with self._connection() as connection:
            row = await connection.fetchrow(
                f"SELECT {_COLUMNS} FROM banana_entries"
                " WHERE batch = $1 AND idx = $2 AND state IS NOT NULL",
                self.batch,
                index,
            )
        return None if row is None else self._entry(tuple(row))

    async def request_matches(
        self, index: int, request: GenerationRequest | None, *, raw_input: str | None = None
    ) -> bool:
        """Tell whether the entry of ``index`` was recorded for this same input."""
        check_index(index)
        async with self._connection() as connection:
            row = await connection.fetchrow(
                "SELECT request, raw_input FROM banana_entries"
                " WHERE batch = $1 AND idx = $2 AND state IS NOT NULL",
                self.batch,
                index,
            )
        if row is None:
            return False
        if request is None:
            return row["request"] is None and row["raw_input"] == _text(raw_input)
        return row["request"] is not None and row["request"] == canonical_request(request)

    async def record_sending(self, index: int, request: GenerationRequest) -> None:
        """Record that the create of ``request`` is about to be sent (-> ``SENDING``).

        Raises:
            ValueError: Anything but ``ERROR`` is recorded for ``index``.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        await self._update(
            index,
            EntryState.SENDING,
            "request = $6, raw_input = NULL, task_id = NULL, task = NULL, error = NULL,"
            " error_type = NULL, path = NULL",
            canonical_request(request),
            action="record a new create",
        )

    async def record_created(self, index: int, task: Task) -> None:
        """Record the task the create returned, or a newer snapshot (-> ``CREATED``).

        Raises:
            ValueError: The entry is not ``SENDING`` or ``CREATED``, or holds another task.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        await self._task(index, task, EntryState.CREATED, None, None, "record its task")

    async def record_finished(self, index: int, task: Task) -> None:
        """Record a task that ended (-> ``COMPLETED`` or ``FAILED``).

        Raises:
            ValueError: The task has not ended, the table forbids the record,
                or the entry holds another task.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        if not task.status.terminal:
            raise ValueError(f"task {task.id} has not finished (status {task.status.value!r})")
        if task.status is TaskStatus.COMPLETED:
            await self._task(index, task, EntryState.COMPLETED, None, None, "record its end")
        else:
            message = _text(task.error or f"task {task.id} failed")
            await self._task(
                index, task, EntryState.FAILED, message, "TaskFailedError", "record its end"
            )

    async def record_error(
        self,
        index: int,
        request: GenerationRequest | None,
        error: BaseException,
        *,
        raw_input: str | None = None,
    ) -> None:
        """Record that the input failed with certainly nothing created (-> ``ERROR``).

        Raises:
            ValueError: The entry is not new, ``SENDING`` or ``ERROR``.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        await self._update(
            index,
            EntryState.ERROR,
            "request = coalesce($6, request), raw_input = coalesce($7, raw_input),"
            " error = $8, error_type = $9",
            None if request is None else canonical_request(request),
            _text(raw_input),
            _text(error_text(error)),
            _text(type(error).__name__),
            action="record an error",
        )

    async def record_unconfirmed(
        self,
        index: int,
        request: GenerationRequest,
        error: BaseException,
        *,
        task_id: str | None = None,
    ) -> None:
        """Record that a create may have created a task (-> ``UNCONFIRMED``).

        Raises:
            ValueError: The entry is not ``SENDING``.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        await self._update(
            index,
            EntryState.UNCONFIRMED,
            "request = $6, task_id = coalesce($7, task_id), error = $8, error_type = $9",
            canonical_request(request),
            _text(task_id),
            _text(error_text(error)),
            _text(type(error).__name__),
            action="record an unconfirmed create",
        )

    async def record_download(self, index: int, path: str | os.PathLike[str]) -> None:
        """Record where the image of a ``COMPLETED`` entry was saved.

        Raises:
            ValueError: The entry is not ``COMPLETED``.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        await self._update(
            index,
            EntryState.COMPLETED,  # a step inside COMPLETED, not a transition
            "path = $6, error = NULL, error_type = NULL",
            _text(os.fspath(path)),
            action="record a download",
            before=([EntryState.COMPLETED.value], False),
        )

    async def note_error(self, index: int, error: BaseException) -> None:
        """Keep an error on an entry without changing its state.

        Raises:
            ValueError: Nothing is recorded for ``index``.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        await self._update(
            index,
            None,
            "error = $6, error_type = $7",
            _text(error_text(error)),
            _text(type(error).__name__),
            action="note an error",
            before=(sorted(state.value for state in EntryState), False),
            keep_state=True,
        )

    async def mark_resend(self, index: int) -> None:
        """Forget a ``SENDING``, ``UNCONFIRMED`` or ``FAILED`` entry so that it is created again.

        The input stays claimed by this worker, with its request.

        Raises:
            ValueError: The entry is not ``SENDING``, ``UNCONFIRMED`` or ``FAILED``.
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        await self._update(
            index,
            None,
            "raw_input = NULL, task_id = NULL, task = NULL, error = NULL, error_type = NULL,"
            " path = NULL",
            action="mark it to resend",
        )

    async def aclose(self, *, on_wait: Callable[[float], object] | None = None) -> None:
        """Give back the inputs this worker holds unsettled, leave the batch, disconnect.

        Closing twice is harmless. The inputs given back are taken by the
        other workers at once, without waiting for a lease to run out. While
        the database is unreachable, closing waits for it as long as the
        lease lasts (after that the inputs are the other workers' anyway),
        and says so at once: one WARNING, or a call of ``on_wait``.

        Args:
            on_wait: Called once, instead of the WARNING, with the seconds
                the close may wait for the database (a command line tells
                its user how to skip the wait: see ``banana-async batch``).
        """
        if self._closed:
            return
        self._closed = True
        self._on_close_wait = on_wait
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._down_since is not None and not self.lease_lost:
            # An outage known already: the first try would only confirm it.
            self._say_close_wait(self._lease_until - time.monotonic())

        async def give_back(connection: Any) -> None:
            await connection.execute(
                "UPDATE banana_entries SET owner = NULL WHERE batch = $1 AND owner = $2",
                self.batch,
                self.worker,
            )
            await connection.execute(
                "DELETE FROM banana_workers WHERE batch = $1 AND id = $2", self.batch, self.worker
            )

        try:
            # A reader holds nothing (and may have no right to write); a
            # worker whose lease ran out holds nothing any more either.
            if self._joined and self._lease_until > time.monotonic():
                # Through a restart too, while the lease lasts.
                await self._retrying(give_back, transaction=True)
        except JournalError:
            pass  # the lease ran out while the database was away: nothing is held
        except Exception as exc:
            # The lease runs out by itself: the inputs are taken over later.
            logger.warning(
                "journal %s: worker %s could not give back its inputs (%s); other "
                "workers take them once its lease expires",
                self.name,
                self.worker,
                error_text(exc),
            )
        finally:
            await self._pool.close()

    # -- claims -------------------------------------------------------------------------

    async def claim(
        self, index: int, request: GenerationRequest | None, *, raw_input: str | None = None
    ) -> bool:
        """Claim input ``index`` for this worker; False if another worker has it.

        Another worker has it while its lease is alive, and once it settled
        the input in this run. Whoever holds it, the input is first checked
        against what the batch recorded for the index (and recorded when
        nothing is): the request (or, for an input that is no valid request,
        ``raw_input``) stays on the row, so that another worker can take the
        input over without reading it, and every worker reading the index
        later is checked against it.

        What a differing input may replace: a claim that created nothing
        and that no live worker holds nor anybody settled in this run (a
        worker that stopped gave it back), and an invalid input recorded
        by an earlier run (a corrected file, as SQLite allows).

        Raises:
            JournalError: The batch recorded another input at ``index``: the
                workers read different inputs (another file, or other options).
            ValueError: a closed store.
        """
        check_index(index)
        text = None if request is None else canonical_request(request)
        raw = None if request is not None else _text(raw_input)

        async def claim(connection: Any) -> bool:
            inserted = await connection.fetchval(
                "INSERT INTO banana_entries (batch, idx, request, raw_input, updated_at, owner)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (batch, idx) DO NOTHING"
                " RETURNING idx",
                self.batch,
                index,
                text,
                raw,
                time.time(),
                self.worker,
            )
            if inserted is not None:
                return True
            row = await connection.fetchrow(
                "SELECT e.state, e.request, e.raw_input, e.owner,"
                f" e.settled_run IS NOT DISTINCT FROM $3 AS settled, {_ORPHAN} AS orphan"
                " FROM banana_entries e WHERE e.batch = $1 AND e.idx = $2 FOR UPDATE",
                self.batch,
                index,
                self._run,
            )
            mine = row["owner"] == self.worker
            free = not row["settled"] and (mine or row["orphan"])
            same = (
                row["request"] == text
                if text is not None
                else row["request"] is None and row["raw_input"] == raw
            )
            replaceable = free and (
                row["state"] is None or (row["request"] is None and text is not None)
            )
            if not same and not replaceable:
                raise self._mismatch(index, row["owner"], settled=bool(row["settled"]))
            if not free:
                return False
            await connection.execute(
                "UPDATE banana_entries SET owner = $3,"
                " request = CASE WHEN state IS NULL THEN $4 ELSE request END,"
                " raw_input = CASE WHEN state IS NULL THEN $5 ELSE raw_input END"
                " WHERE batch = $1 AND idx = $2",
                self.batch,
                index,
                self.worker,
                text,
                raw,
            )
            return True

        self._check_open()
        claimed, _ = await self._retrying(claim, transaction=True)
        if claimed:
            self._held.add(index)
        return claimed

    async def settle(self, index: int) -> None:
        """Mark input ``index`` settled in this run (its outcome was handed over); unclaim it.

        Raises:
            JournalError: This worker does not hold the input (or its lease ran out).
        """
        check_index(index)
        async with self._connection() as connection:
            done = await connection.fetchval(
                "UPDATE banana_entries SET owner = NULL, settled_run = $3"
                " WHERE batch = $1 AND idx = $2 AND owner = $4 AND EXISTS (SELECT 1 FROM"
                " banana_workers w WHERE w.batch = $1 AND w.id = $4 AND w.lease_until > now())"
                " RETURNING idx",
                self.batch,
                index,
                self._run,
                self.worker,
            )
            if done is None and connection.retried:
                # The first try may have committed before its answer was lost.
                done = await connection.fetchval(
                    "SELECT idx FROM banana_entries WHERE batch = $1 AND idx = $2"
                    " AND owner IS NULL AND settled_run = $3",
                    self.batch,
                    index,
                    self._run,
                )
        if done is None:
            raise self._lost(index)
        self._held.discard(index)

    async def take_over(self) -> tuple[int, GenerationRequest | None, str | None] | None:
        """Claim an input no live worker holds and nobody settled in this run.

        Waits while other live workers hold unsettled inputs (any of them
        may die and leave them); returns None once every input of the batch
        is settled in this run or held by this worker. Meanwhile
        :attr:`waiting_for` says whose inputs it waits for.

        Returns:
            The input's index, its request (None for an input that is no
            valid request), and its text in that case.
        """
        pause = min(_SWEEP_PAUSE, self.lease / 3)
        said: float | None = None

        async def take(connection: Any) -> tuple[Any, list[Any]]:
            # Two statements in one transaction, not one UPDATE with a
            # subquery: the row's owner before the take is wanted too (for
            # the summary), and RETURNING only sees the row after it.
            # An input this worker owns and does not hold was taken by a
            # try whose answer was lost: it is taken again.
            picked = await connection.fetchrow(
                "SELECT e.idx, e.owner, e.request, e.raw_input FROM banana_entries e"
                " WHERE e.batch = $1 AND e.settled_run IS DISTINCT FROM $2"
                f" AND ({_ORPHAN} OR (e.owner = $3 AND e.idx <> ALL($4::bigint[])))"
                " ORDER BY e.idx LIMIT 1 FOR UPDATE SKIP LOCKED",
                self.batch,
                self._run,
                self.worker,
                sorted(self._held),
            )
            if picked is not None:
                await connection.execute(
                    "UPDATE banana_entries SET owner = $3 WHERE batch = $1 AND idx = $2",
                    self.batch,
                    picked["idx"],
                    self.worker,
                )
                return picked, []
            holders = await connection.fetch(
                "SELECT e.owner, count(*) AS inputs,"
                " extract(epoch FROM max(w.lease_until) - now()) AS left"
                " FROM banana_entries e LEFT JOIN banana_workers w"
                " ON w.batch = e.batch AND w.id = e.owner"
                " WHERE e.batch = $1 AND e.settled_run IS DISTINCT FROM $2"
                " AND e.owner IS DISTINCT FROM $3 GROUP BY e.owner ORDER BY e.owner",
                self.batch,
                self._run,
                self.worker,
            )
            return None, holders

        while True:
            self._check_open()
            (row, holders), _ = await self._retrying(take, transaction=True)
            if row is not None:
                self._waiting = ()
                index = int(row["idx"])
                self._note_taken(index, row["owner"])
                text = row["request"]
                request = (
                    None
                    if text is None
                    else CONVERTER.structure(json.loads(text), GenerationRequest)
                )
                self._held.add(index)
                return index, request, row["raw_input"]
            if not holders:
                self._waiting = ()
                self._say_taken()
                return None
            now = time.monotonic()
            self._waiting = tuple(
                LeaseWait(
                    worker=str(holder["owner"]),
                    inputs=int(holder["inputs"]),
                    lease_until=now + max(0.0, float(holder["left"] or 0.0)),
                )
                for holder in holders
                if holder["owner"] is not None  # given back: taken at the next look
            )
            said = self._say_waiting(said)
            await asyncio.sleep(pause)

    @property
    def waiting_for(self) -> tuple[LeaseWait, ...]:
        """The other workers whose inputs :meth:`take_over` waits for now (none: it is not waiting).

        Updated at each look (every second at most); a progress display may
        show it: a worker that waits for a dead worker's lease to run out
        would otherwise look hung.
        """
        return self._waiting

    def _note_taken(self, index: int, previous: str | None) -> None:
        """Log one input taken over (at DEBUG), and the first of each worker (at INFO)."""
        whose = "given back" if previous is None else f"of worker {previous}"
        logger.debug(
            "journal %s: worker %s takes over input %d (%s)", self.name, self.worker, index, whose
        )
        if previous == self.worker:
            return  # taken by a try whose answer was lost: counted then
        if previous is None:
            self._taken["given back"] += 1  # by a worker that stopped
            return
        if not self._taken[previous]:
            logger.info(
                "journal %s: worker %s takes over the inputs of worker %s (its lease ran out)",
                self.name,
                self.worker,
                previous,
            )
        self._taken[previous] += 1

    def _say_taken(self) -> None:
        """Log at INFO, once, how many inputs this worker took over, by whose they were."""
        for previous, count in sorted(self._taken.items()):
            if previous == "given back":
                logger.info(
                    "journal %s: worker %s took over %d input(s) given back by workers "
                    "that stopped",
                    self.name,
                    self.worker,
                    count,
                )
            else:
                logger.info(
                    "journal %s: worker %s took over %d input(s) of worker %s",
                    self.name,
                    self.worker,
                    count,
                    previous,
                )
        self._taken.clear()

    def _say_waiting(self, said: float | None) -> float:
        """Log at INFO whom this worker waits for: once, then every 10 s (when it last said so).

        Not again when only the counts change: a live worker settles its
        inputs one by one, and each would be another line.
        """
        now = time.monotonic()
        if said is not None and now - said < _WAIT_NOTE_EVERY:
            return said
        for wait in self._waiting:
            logger.info(
                "journal %s: worker %s waits for worker %s's lease on %d input(s), ~%.0f s "
                "left (renewed while it is alive; if it died, its inputs are taken then)",
                self.name,
                self.worker,
                wait.worker,
                wait.inputs,
                wait.left(now),
            )
        return now

    # -- reading the whole batch --------------------------------------------------------

    async def entries(self) -> list[JournalEntry]:
        """Every input of the batch that has an entry, by index (whoever recorded it)."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                f"SELECT {_COLUMNS} FROM banana_entries WHERE batch = $1 AND state IS NOT NULL"
                " ORDER BY idx",
                self.batch,
            )
        return [self._entry(tuple(row)) for row in rows]

    async def workers(self) -> list[str]:
        """The ids of the batch's live workers (whose lease has not run out), sorted."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                "SELECT id FROM banana_workers WHERE batch = $1 AND lease_until > now()"
                " ORDER BY id",
                self.batch,
            )
        return [str(row["id"]) for row in rows]

    async def counts(self) -> dict[EntryState, int]:
        """How many inputs of the batch are in each state."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                "SELECT state, count(*) FROM banana_entries WHERE batch = $1"
                " AND state IS NOT NULL GROUP BY state",
                self.batch,
            )
        counts: Counter[EntryState] = Counter()
        for state, count in rows:
            counts[EntryState(state)] = int(count)
        return dict(counts)

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the journal store {self.name} is closed")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Retrying]:
        self._check_open()
        yield _Retrying(self)

    async def _retrying(
        self, operation: Callable[[Any], Awaitable[_T]], *, transaction: bool = False
    ) -> tuple[_T, bool]:
        """Run ``operation`` on a connection, again while the database is away.

        A worker waits for the database as long as its lease lasts: past
        that, other workers may take its inputs, so it must create nothing
        more. The first lost connection of an outage logs one WARNING, the
        first statement that gets through after it one INFO.

        Returns:
            What ``operation`` returned, and whether it was run more than once.

        Raises:
            JournalError: The database stayed away until this worker's lease
                ran out (for a store that only reads: for one lease's length).
        """
        delay = _RETRY_FIRST
        retried = False
        while True:
            connected = False
            try:
                async with self._pool.acquire() as connection:
                    connected = True
                    if transaction:
                        async with connection.transaction():
                            result = await operation(connection)
                    else:
                        result = await operation(connection)
            except Exception as exc:
                if not _connection_lost(exc):
                    raise
                why = _why_lost(exc, _STATEMENT_TIMEOUT if connected else self._connect_timeout)
                left = self._wait_left(why)
                if left <= 0:
                    raise JournalError(
                        f"journal {self.name}: the database has been unreachable for "
                        f"{time.monotonic() - (self._down_since or 0):.0f} s "
                        f"({why}) and worker {self.worker}'s lease of "
                        f"{self.lease:g} s ran out meanwhile: other workers may take its "
                        "inputs, so it creates nothing more",
                        path=self.name,
                    ) from exc
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _RETRY_MOST)
                retried = True
                continue
            if self._down_since is not None:
                # As loud as the line that said it was lost: without -v,
                # a WARNING alone would leave the outage open on screen.
                logger.log(
                    logging.WARNING if self._said_lost else logging.INFO,
                    "journal %s: the database is back after %.1f s; worker %s %s",
                    self.name,
                    time.monotonic() - self._down_since,
                    self.worker,
                    "gave its inputs back" if self._closed else "goes on",
                )
                self._down_since = None
                self._said_lost = False
            return result, retried

    def _wait_left(self, why: str) -> float:
        """Seconds left to wait for the database; logs the WARNING of a new outage."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            left = self._lease_until - now if self._joined else self.lease
            if self._closed:
                self._say_close_wait(left)
            elif left > 0:
                self._said_lost = True
                logger.warning(
                    "journal %s: lost the database (%s); worker %s tries again for up to "
                    "%.0f s (until its lease runs out) and keeps polling its tasks meanwhile",
                    self.name,
                    why,
                    self.worker,
                    left,
                )
        if self._joined:
            return self._lease_until - now
        return self._down_since + self.lease - now

    def _say_close_wait(self, left: float) -> None:
        """Say, once, that closing waits up to ``left`` s for the database (see :meth:`aclose`)."""
        if self._said_close_wait or left <= 0:
            return
        self._said_close_wait = True
        self._said_lost = True  # the database's return is told as loudly
        if self._on_close_wait is not None:
            self._on_close_wait(left)
            return
        logger.warning(
            "journal %s: worker %s stops while the database is unreachable: it waits up to "
            "%.0f s (until its lease runs out) to give back the %d input(s) it holds; past "
            "that, the other workers take them over once its lease has run out",
            self.name,
            self.worker,
            left,
            len(self._held),
        )

    async def _task(  # noqa: PLR0917 - one record's parts, in its order
        self,
        index: int,
        task: Task,
        state: EntryState,
        error: str | None,
        error_type: str | None,
        action: str,
    ) -> None:
        await self._update(
            index,
            state,
            "task_id = $6, task = $7, error = $8, error_type = $9",
            _text(task.id),
            dumps_task(task),
            error,
            error_type,
            action=action,
            same_task=True,
        )

    async def _update(
        self,
        index: int,
        after: EntryState | None,
        sets: str,
        *values: Any,
        action: str,
        before: tuple[list[str], bool] | None = None,
        keep_state: bool = False,
        same_task: bool = False,
    ) -> None:
        """One record: an UPDATE whose WHERE holds the table's check, the claim and the lease.

        ``sets`` uses $6 onwards for ``values``. When no row changes, the
        checks run one by one to say why.
        """
        check_index(index)
        states, from_nothing = before if before is not None else _states(after)
        new_state = "" if keep_state else f"state = ${6 + len(values)}, "
        condition = "(state = ANY($4::text[])" + (" OR state IS NULL)" if from_nothing else ")")
        if same_task:
            # $6 is the task id given: the entry holds no id yet, or this one.
            condition += " AND (task_id IS NULL OR task_id = $6)"
        arguments: list[Any] = [self.batch, index, time.time(), states, self.worker, *values]
        if not keep_state:
            arguments.append(None if after is None else after.value)
        async with self._connection() as connection:
            changed = await connection.fetchval(
                f"UPDATE banana_entries SET {new_state}{sets}, updated_at = $3"
                f" WHERE batch = $1 AND idx = $2 AND {condition} AND {_FENCE} RETURNING idx",
                *arguments,
            )
            if changed is not None:
                return
            retried = connection.retried
            row = await connection.fetchrow(
                "SELECT state, task_id, task, owner, EXISTS (SELECT 1 FROM banana_workers w"
                " WHERE w.batch = $1 AND w.id = $3 AND w.lease_until > now()) AS alive"
                " FROM banana_entries WHERE batch = $1 AND idx = $2",
                self.batch,
                index,
                self.worker,
            )
        if row is None or row["owner"] != self.worker or not row["alive"]:
            raise self._lost(index)
        state = None if row["state"] is None else EntryState(row["state"])
        if retried and not keep_state and state is after:
            # Sent again after a lost connection: the first try committed.
            return
        if (state is None and not from_nothing) or (
            state is not None and state.value not in states
        ):
            shown = "nothing recorded" if state is None else f"state {state.value!r}"
            raise ValueError(f"cannot {action} for input {index}: it has {shown}")
        recorded = json.loads(row["task"])["id"] if row["task"] else row["task_id"]
        raise ValueError(f"input {index} already has task {recorded}, not {values[0]}")

    def _mismatch(self, index: int, owner: str | None, *, settled: bool) -> JournalError:
        if owner is not None:
            whose = f" (by worker {owner})"
        elif settled:
            whose = " (another worker finished it in this run)"
        else:
            whose = ""
        return JournalError(
            f"input {index} differs from the one recorded in the journal {self.name}{whose}: "
            "every worker of a batch must read the same inputs with the same options (file, "
            "--size, --model, ...)",
            path=self.name,
        )

    def _lost(self, index: int) -> JournalError:
        return JournalError(
            f"journal {self.name}: worker {self.worker} no longer holds input {index} "
            "(its lease ran out and another worker may have taken it); it stops here",
            path=self.name,
        )

    def _entry(self, row: tuple[Any, ...]) -> JournalEntry:
        try:
            return entry_from_row(row)
        except Exception as exc:
            raise JournalError(
                f"journal {self.name} is damaged: entry {row[0]} cannot be read ({exc})",
                path=self.name,
            ) from exc
