"""The batch engine behind ``generate_many``: bounded concurrency, one outcome per input.

The engine is handed what it needs (:class:`BatchOperations`: validate,
create, wait, download, an event hook) and how to run (:class:`BatchOptions`);
it knows nothing else of the client that calls it.

How the pieces fit:

- A *producer* reads the inputs lazily, one at a time, and only when there
  is room: at most ``concurrency`` tasks are in flight at the provider
  (created, not finished), and at most ``2 * concurrency`` inputs are between
  being read and being handed to the caller. A million-line input is never
  in memory.
- One *worker* (an asyncio task) per input creates its task, waits on it,
  downloads the image if asked, and puts its :class:`Outcome` on a queue.
  Workers never raise for a bad prompt, nor for a failure nobody foresaw:
  the error goes into that input's outcome.
- Creates are paid for by the caller's reading: at most ``concurrency``
  inputs are created and not yet read by the caller. A caller that stopped
  reading (it left the loop but holds the iterator) buys no more tasks, and
  a slow reader keeps the provider busy with all but the outcomes it has
  not read yet.
- The caller iterates the outcomes in completion order. Leaving the loop
  early, or being cancelled, cancels the producer and every worker; use
  :func:`contextlib.aclosing` to make that happen at once rather than when
  the generator is garbage-collected. A cancellation that arrives during
  that cleanup is raised once the cleanup is done, never swallowed.
- With a journal, every step is recorded before the next one starts, so a
  run killed at any moment can be resumed (see :mod:`banana_async.journal`).
  The first journal failure stops all creating; once the creates on the wire
  have answered, the caller gets :class:`~banana_async.JournalError` with
  every created task id the journal lacks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from banana_async._checks import count_problem, error_text
from banana_async._logging import RAISED_LATER
from banana_async._polling import check_interval, check_timeout
from banana_async.errors import (
    APIConnectionError,
    AuthenticationError,
    BananaError,
    DownloadError,
    InvalidRequestError,
    JournalError,
    ProviderError,
    ResponseValidationError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    UnconfirmedCreateError,
)
from banana_async.journal import (
    ClaimingStore,
    EntryState,
    Journal,
    JournalStore,
    ResumeStep,
    open_store,
    resume_step,
)
from banana_async.journal.postgres import PostgresStore, inputs_fingerprint, is_postgres_url
from banana_async.models import (
    BatchInput,
    GenerationRequest,
    Outcome,
    Task,
    TaskEvent,
    TaskStatus,
    request_from,
)

if TYPE_CHECKING:
    from banana_async.journal import JournalEntry

__all__ = ["BatchOperations", "BatchOptions", "Changed", "Emit", "SendHooks", "changes", "run"]

logger = logging.getLogger("banana_async")
_T = TypeVar("_T")

Emit = Callable[[TaskEvent], Awaitable[None]]
"""The event hook: awaited with each :class:`~banana_async.TaskEvent` of the batch.

The engine emits a task's creation itself (``previous`` None; never for a
task created in an earlier, journaled run), and hands each wait a
:data:`Changed` that emits the status changes the wait sees. It must not
raise: a hook that runs user code catches and logs what that code raises."""

Changed = Callable[[Task, TaskStatus | None], Awaitable[None]]
"""What a wait awaits with a task whose status it saw change, and the status before."""


def changes(emit: Emit | None, index: int | None) -> Changed | None:
    """The :data:`Changed` of one wait, emitting events with ``index`` (None: no one listens)."""
    if emit is None:
        return None

    async def changed(task: Task, previous: TaskStatus | None) -> None:
        await emit(TaskEvent(task, previous, index))

    return changed


@attrs.frozen
class SendHooks:
    """What a create operation tells a journaled batch about its attempts.

    A create waits for its turn from the rate limiter, for a connection, and
    after a 429 for the next turn: only the moment it goes on the wire makes
    its fate unknown. So the journal records ``sending`` then, not when the
    create is asked for, and a create interrupted before that (or between a
    429 and its next attempt) is found on resume as never sent.

    Attributes:
        sending: Awaited right before an attempt goes on the wire.
        not_sent: Awaited with the error of an attempt that certainly was
            not processed (a 429, a connection never made) and is to be sent
            again, before the wait for that.
    """

    sending: Callable[[], Awaitable[None]]
    not_sent: Callable[[BananaError], Awaitable[None]]


@attrs.frozen
class BatchOperations:
    """What the engine is handed to do its work; it knows nothing else of its caller.

    Attributes:
        validate: Check a request against the provider's rules; raises
            :class:`~banana_async.InvalidRequestError`.
        create: Create a task for a validated request, given the batch's
            ``timeout``: its deadline counts from the call, and a 429 is sent
            again until then (only the deadline ends a prompt for it). With
            :class:`SendHooks` (a journaled batch), it tells them of each
            attempt as it goes on the wire and of each to be sent again.
        wait: Poll a created task to a terminal status, given the batch's
            ``timeout`` and ``poll_interval`` (None: the caller's defaults),
            awaiting the :data:`Changed` given (if any) with each status
            change it sees, the terminal one included; raises
            :class:`~banana_async.TaskFailedError` or
            :class:`~banana_async.TaskTimeoutError` like
            :meth:`~banana_async.BananaClient.wait`.
        download: Save a completed task's image into a directory.
        closed: True once the operations cannot run any more (the client was
            closed under a running batch).
        provider: The dialect's name and the create and query base URLs: a
            journal is bound to them, since task ids mean nothing elsewhere.
        emit: The event hook (see :data:`Emit`), or None when nobody
            listens: then no event is even built.
    """

    validate: Callable[[GenerationRequest], None]
    create: Callable[[GenerationRequest, float | None, SendHooks | None], Awaitable[Task]]
    wait: Callable[[Task, float | None, float | None, Changed | None], Awaitable[Task]]
    download: Callable[[Task, Path], Awaitable[Path]]
    closed: Callable[[], bool]
    provider: tuple[str, str, str]
    emit: Emit | None = None


@attrs.frozen
class BatchOptions:
    """How one batch runs: everything ``generate_many`` was told besides its inputs.

    Attributes:
        concurrency: Most tasks in flight at the provider at once.
        timeout: Deadline of each task's create and wait (None: the caller's default).
        poll_interval: Minimum seconds between polls (None: the caller's default).
        defaults: The fields of a request made from a plain prompt (``model``,
            ``resolution``, ``size``, ``image_urls``; None ones are left out).
        download_to: Save each image into this directory, or None.
        journal: A journal file, an open :class:`~banana_async.journal.Journal`,
            a ``postgresql://`` URL, any store, or None.
        batch: The batch's name in a Postgres journal, which many workers
            share (required with one, refused with anything else).
        resend_unconfirmed: Create again the inputs whose create an earlier
            journaled run sent without seeing its answer.
        retry_failed: Create again the inputs whose task an earlier journaled
            run saw fail (a new task each, billed anew).
    """

    concurrency: int
    timeout: float | None = None
    poll_interval: float | None = None
    defaults: Mapping[str, Any] = attrs.field(factory=dict)
    download_to: str | os.PathLike[str] | None = None
    journal: str | os.PathLike[str] | Journal | JournalStore | None = None
    resend_unconfirmed: bool = False
    retry_failed: bool = False
    batch: str | None = None

    def check(self) -> None:
        """Fail at once, before anything is sent, for options no batch could run with.

        A bad deadline found by each wait would come after each billed create.

        Raises:
            InvalidRequestError: a bad concurrency, request defaults, timeout,
                poll interval, ``download_to`` or ``journal``.
        """
        problem = count_problem(self.concurrency, "concurrency")
        if problem is not None:
            raise InvalidRequestError(problem)
        if self.download_to is not None and not isinstance(self.download_to, str | os.PathLike):
            raise InvalidRequestError(
                f"download_to must be a directory path, not {type(self.download_to).__name__}"
            )
        folder = None if self.download_to is None else os.fspath(self.download_to)
        if folder is not None and ("\0" if isinstance(folder, str) else b"\0") in folder:
            # No file system takes it: every image would be paid for, then fail to save.
            raise InvalidRequestError(f"download_to must not hold a NUL character: {folder!r}")
        journal = self.journal
        if journal is not None and not isinstance(
            journal, str | os.PathLike | Journal | JournalStore
        ):
            raise InvalidRequestError(
                "journal must be a file path, a Journal or a JournalStore, "
                f"not {type(journal).__name__}"
            )
        if isinstance(journal, PostgresStore) and journal.read_only:
            raise InvalidRequestError(
                f"journal= is a PostgresStore opened with join=False ({journal.name}): it only "
                "reads the batch. Open it with join=True (the default) to run the batch as "
                "one of its workers"
            )
        if is_postgres_url(journal):
            if not isinstance(self.batch, str) or not self.batch:
                raise InvalidRequestError(
                    "a Postgres journal needs batch=NAME: the name every worker of the batch gives"
                )
        elif self.batch is not None:
            raise InvalidRequestError(
                "batch= names a batch in a Postgres journal: give journal='postgresql://...'"
            )
        request_from("check", **self.defaults)
        check_timeout(self.timeout)
        if self.poll_interval is not None:
            check_interval(self.poll_interval)


def _may_have_created(error: BananaError) -> bool:
    """Whether a failed create can have made (and billed) a task anyway."""
    if isinstance(error, APIConnectionError):
        return error.request_sent
    if isinstance(error, ProviderError):
        # An error code beside a task id: a task may exist.
        return error.task_id is not None
    # A 5xx may come after the work was done; an unreadable 2xx body was
    # most likely a created task whose answer got mangled.
    return isinstance(error, ServerError | ResponseValidationError | _Unexpected)


def _carried_id(error: BananaError) -> str | None:
    """The task id a failed create's error carries, if the provider sent one."""
    task_id = getattr(error, "task_id", None)
    return task_id if isinstance(task_id, str) else None


class _Unexpected(BananaError):
    """A failure of one input that no part of the client foresaw (a bug).

    It becomes that input's outcome, logged with its traceback, instead of
    ending a batch that thousands of other inputs are part of.
    """


class _Done:
    """Marks the end of the outcomes on the queue."""


class _Failed:
    """Carries an exception of the producer (a bad input iterable, a bug) to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _JournalBroke(Exception):
    """Raised inside the batch once a journal write failed: this input stops here."""


def _not_sent_for(refused: AuthenticationError, index: int) -> AuthenticationError:
    """The error of an input not sent because an earlier create's key was refused."""
    return AuthenticationError(
        f"input {index} was not sent: the provider refused the API key of an earlier "
        f"create ({error_text(refused)}); nothing more is sent with it. Check the key "
        "(BANANA_API_KEY, or api_key=) and run the batch again",
        status_code=refused.status_code,
    )


async def _settled(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` even if cancelled meanwhile, and retrieve its error.

    A record on its way is never left behind: its store call is already
    under way, and its failure (already reported by :meth:`_Batch.jot`)
    must not end as an unretrieved exception. A cancellation that came
    meanwhile is raised afterwards, never swallowed.
    """
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if not task.cancelled():  # the caller's cancellation, not the record's
                cancelled = exc
        except Exception:
            pass  # the record's own failure: retrieved below
    if not task.cancelled():
        task.exception()
    if cancelled is not None:
        raise cancelled


async def _aiter(inputs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(inputs, AsyncIterable):
        async for item in inputs:
            yield item
    else:
        for item in inputs:
            yield item


def _safe_repr(item: object) -> str:
    try:
        text = repr(item)
    except Exception:  # a user's object whose repr fails is still one bad input
        text = f"<{type(item).__name__} object>"
    return text[:1000]


class _Batch:
    """The state of one ``generate_many`` run."""

    def __init__(self, operations: BatchOperations, options: BatchOptions) -> None:
        concurrency = options.concurrency
        self.ops = operations
        self.timeout = options.timeout
        self.poll_interval = options.poll_interval
        self.download_to = Path(options.download_to) if options.download_to is not None else None
        # Opened by the generator: only a run that starts holds its lock.
        self.journal: JournalStore | None = None
        # The same store when many workers share it: inputs are claimed first.
        self.claims: ClaimingStore | None = None
        self.batch_name = options.batch
        self.resend_unconfirmed = options.resend_unconfirmed
        self.retry_failed = options.retry_failed
        self.defaults = options.defaults
        self.in_flight = asyncio.Semaphore(concurrency)
        self.undelivered = asyncio.Semaphore(2 * concurrency)
        self.outcomes: asyncio.Queue[Outcome | _Done | _Failed] = asyncio.Queue()
        self.workers: set[asyncio.Task[None]] = set()
        # Inputs whose create passed the gate and whose outcome the caller
        # has not read (see may_create), by index.
        self.limit = concurrency
        self.unread: set[int] = set()
        # Creates waiting for a read, first come first served: a read wakes
        # one of them (not all, to find all but one still blocked).
        self.demand: collections.deque[asyncio.Future[None]] = collections.deque()
        # Creates sent and not yet answered, or whose task is not yet recorded.
        self.creating = 0
        # The first journal write that failed, and the created task ids the
        # journal lacks since (input index -> id).
        self.journal_error: Exception | None = None
        self.unrecorded: dict[int, str] = {}
        self.failure_delivered = False
        # The first create the provider answered 401 (the key is wrong or
        # missing): every later create would be refused the same way.
        self.refused: AuthenticationError | None = None

    # -- flow control --------------------------------------------------------------

    def deliver(self, item: Outcome | _Done | _Failed) -> None:
        self.outcomes.put_nowait(item)

    def read(self, outcome: Outcome) -> None:
        """The caller has read ``outcome``: its create is paid for, another may go."""
        if outcome.index in self.unread:
            self.unread.discard(outcome.index)
            self.wake_one()

    def wake_one(self) -> None:
        """Let the first create waiting in :meth:`may_create` look again."""
        demand = self.demand
        while demand:
            waiter = demand.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        """Let every create waiting in :meth:`may_create` look again (the journal failed)."""
        demand, self.demand = self.demand, collections.deque()
        for waiter in demand:
            if not waiter.done():
                waiter.set_result(None)

    async def may_create(self, index: int) -> bool:
        """Wait until input ``index`` may be created; False once the journal failed.

        A create is paid for by the caller's reading: at most ``concurrency``
        inputs are created and not yet read. A caller that left the loop but
        still holds the iterator must not keep buying tasks, and cannot be
        told from one that is busy with an outcome: either way, once it has
        ``concurrency`` outcomes of created tasks to read (or in flight),
        nothing more is created until it reads one. A caller that stops
        costs at most the one create its last read paid for.
        """
        while self.journal_error is None and len(self.unread) >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self.demand.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.wake_one()  # woken, but gone: the turn passes on
                raise
        if self.journal_error is not None:
            return False
        self.unread.add(index)
        if len(self.unread) < self.limit:
            self.wake_one()  # room for more (a read woke this one first)
        return True

    # -- the journal ---------------------------------------------------------------

    async def jot(self, call: Callable[[JournalStore], Awaitable[_T]]) -> _T | None:
        """Call a journal store method (None without a journal).

        A failure, read or write, stops all creating (see :class:`JournalError`)
        and raises :class:`_JournalBroke` to end this input here.
        """
        journal = self.journal
        if journal is None:
            return None
        try:
            return await call(journal)
        except Exception as exc:
            if self.journal_error is None:
                self.journal_error = exc
                logger.error(
                    "journal %s failed (%s); creating no more tasks",
                    journal.name,
                    error_text(exc),
                    # The caller gets it as the batch's JournalError too: the
                    # CLI prints that one line alone (see cli.output).
                    extra={RAISED_LATER: True},
                )
                self.wake_all()
                self.report_journal_failure()
            raise _JournalBroke from exc

    async def holds(self, index: int, task_id: str) -> bool:
        """Whether the journal holds ``task_id`` for ``index`` after all (a failed record).

        A record whose answer was lost may have been made (the database
        committed it, then the connection broke): such a task is not lost.
        """
        journal = self.journal
        if journal is None:
            return False
        try:
            entry = await journal.get(index)
        except Exception:  # the journal is broken: the id is listed, to be safe
            return False
        return entry is not None and entry.task_id == task_id

    def lost_id(self, index: int, task_id: str) -> None:
        """Remember (and log at once) a created task the journal could not record."""
        self.unrecorded[index] = task_id
        logger.error(
            "input %d: task %s was created but is not in the journal; note its id",
            index,
            task_id,
        )

    def report_journal_failure(self) -> None:
        """Raise :class:`JournalError` to the caller once no create is in flight."""
        if self.journal_error is None or self.creating or self.failure_delivered:
            return
        self.failure_delivered = True
        journal = self.journal
        path = journal.name if journal is not None else ""
        error = self.journal_error
        if isinstance(error, JournalError):
            # Says itself what happened (inputs that differ, a lost lease).
            message = f"{error}; no task was created after that"
        else:
            message = (
                f"the journal {path} failed ({error_text(error)}); no task was created after that"
            )
        if self.unrecorded:
            ids = ", ".join(f"input {i}: {t}" for i, t in sorted(self.unrecorded.items()))
            message += (
                f". {len(self.unrecorded)} created task(s) are not in the journal, note "
                f"their ids: {ids}"
            )
        failure = JournalError(message, path=path, unrecorded=self.unrecorded)
        failure.__cause__ = error
        self.deliver(_Failed(failure))

    # -- producer -----------------------------------------------------------------

    async def produce(self, inputs: Iterable[Any] | AsyncIterable[Any]) -> None:
        try:
            index = 0
            async for item in _aiter(inputs):
                await self.undelivered.acquire()
                if self.journal_error is not None:
                    break
                try:
                    prepared = await self.prepare(index, item)
                    await self.hand(index, prepared)
                except _JournalBroke:
                    break
                index += 1
            if self.claims is not None and self.journal_error is None:
                with contextlib.suppress(_JournalBroke):  # reported by report_journal_failure
                    await self.take_over(self.claims)
            if self.workers:
                await asyncio.gather(*self.workers)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the caller, not lost in a task
            self.deliver(_Failed(exc))
        else:
            if self.journal_error is None:
                self.deliver(_Done())

    async def hand(
        self, index: int, prepared: Outcome | tuple[GenerationRequest, JournalEntry | None] | None
    ) -> None:
        """Deliver a prepared outcome (settled first), or start its worker, or skip it (None).

        Raises:
            _JournalBroke: the settle failed.
        """
        if prepared is None:
            self.undelivered.release()  # another worker's input: nothing to deliver
        elif isinstance(prepared, Outcome):
            await self.settle(index)
            self.deliver(prepared)
        else:
            self.start(index, *prepared)

    async def settle(self, index: int) -> None:
        """Tell a shared store that input ``index``'s outcome is handed over (if it is one)."""
        claims = self.claims
        if claims is not None:
            await self.jot(lambda _: claims.settle(index))

    async def take_over(self, claims: ClaimingStore) -> None:
        """Run the inputs that other workers left unsettled, until none is left.

        Called once this worker has read all its inputs. Waits (in the
        store) while other live workers hold inputs: any of them may die.

        Raises:
            _JournalBroke: the store failed.
        """
        while True:
            await self.undelivered.acquire()
            if self.journal_error is not None:
                return
            taken = await self.jot(lambda _: claims.take_over())
            if taken is None:
                self.undelivered.release()
                return
            await self.hand(taken[0], await self.resume_taken(*taken))

    async def resume_taken(
        self, index: int, request: GenerationRequest | None, raw: str | None
    ) -> Outcome | tuple[GenerationRequest, JournalEntry | None]:
        """What an input taken over from another worker needs (see :meth:`resume`)."""
        if request is None:
            # Its worker found it no valid prompt; this one cannot read it either.
            error = InvalidRequestError(f"input {index} cannot be read as a prompt: {raw}")
            await self.jot(lambda j: j.record_error(index, None, error, raw_input=raw))
            return Outcome(index, None, error=error)
        entry = await self.jot(lambda j: j.get(index))
        return await self.resume(index, request, entry)

    def start(self, index: int, request: GenerationRequest, entry: JournalEntry | None) -> None:
        worker = asyncio.create_task(
            self.run(index, request, entry), name=f"banana_async-batch-{index}"
        )
        self.workers.add(worker)
        worker.add_done_callback(self.workers.discard)

    # -- one input ----------------------------------------------------------------

    def build(self, index: int, item: Any) -> GenerationRequest:
        if isinstance(item, GenerationRequest):
            request = item
        elif isinstance(item, str):
            request = request_from(item, **self.defaults)
        else:
            raise InvalidRequestError(
                f"input {index} is a {type(item).__name__}, not a prompt or a GenerationRequest"
            )
        self.ops.validate(request)
        return request

    async def prepare(
        self, index: int, item: Any
    ) -> Outcome | tuple[GenerationRequest, JournalEntry | None] | None:
        """Settle an input without HTTP if possible; else what its worker needs.

        None: another worker of a shared store has the input (it is skipped).

        Raises:
            JournalError: the journal holds a different input at this
                index (it belongs to another batch); this ends the batch.
        """
        journal = self.journal
        try:
            request = self.build(index, item)
        except Exception as failure:
            # A user's object may fail anywhere it is looked at (its type,
            # its text): that is one bad input, not the end of the batch.
            exc = (
                failure
                if isinstance(failure, BananaError)
                else InvalidRequestError(
                    f"input {index} cannot be read as a prompt: {error_text(failure)}"
                )
            )
            if journal is not None:
                recorded = await self.jot(lambda j: j.get(index))
                if recorded is not None and recorded.request is not None:
                    raise self.mismatch(index, journal) from exc
                raw = _safe_repr(item)
                claimer = self.claims
                if claimer is not None and not await self.jot(
                    lambda _: claimer.claim(index, None, raw_input=raw)
                ):
                    return None
                await self.jot(lambda j: j.record_error(index, None, exc, raw_input=raw))
            return Outcome(index, None, error=exc)
        if journal is None:
            return request, None
        claims = self.claims
        if claims is not None:
            # The claim checks the input against what the batch recorded for
            # the index, even one another worker holds (JournalError, which
            # stops this worker), and records it when nothing is.
            if not await self.jot(lambda _: claims.claim(index, request)):
                return None
            entry = await self.jot(lambda j: j.get(index))
            return await self.resume(index, request, entry)
        entry = await self.jot(lambda j: j.get(index))
        # An entry without a request was an invalid input that created nothing:
        # a corrected input may take its place.
        if (
            entry is not None
            and entry.request is not None
            and not await self.jot(lambda j: j.request_matches(index, request))
        ):
            raise self.mismatch(index, journal)
        return await self.resume(index, request, entry)

    async def resume(
        self, index: int, request: GenerationRequest, entry: JournalEntry | None
    ) -> Outcome | tuple[GenerationRequest, JournalEntry | None]:
        """What an input with ``entry`` needs: an outcome from it, or its worker's work."""
        if entry is None:
            return request, None
        if entry.state is EntryState.FAILED and self.retry_failed:
            await self.jot(lambda j: j.mark_resend(index))
            return request, None  # forgotten: created again as a new task
        resumed = await self.from_entry(index, request, entry)
        return resumed if resumed is not None else (request, entry)

    @staticmethod
    def mismatch(index: int, journal: JournalStore) -> JournalError:
        return JournalError(
            f"input {index} differs from the one recorded in the journal "
            f"{journal.name}: the journal belongs to another batch",
            path=journal.name,
        )

    async def run(self, index: int, request: GenerationRequest, entry: JournalEntry | None) -> None:
        recording: asyncio.Task[None] | None = None
        try:
            async with self.in_flight:
                created = await self.create(index, request, entry)
                if isinstance(created, Outcome):
                    outcome, record = created, None
                else:
                    task, recording = created
                    outcome, record = await self.wait(index, request, task, recording)
            # The slot is free: the next input's create need not wait for
            # this one's records. The outcome still waits for them, so an
            # outcome the caller sees is in the journal.
            if recording is not None:
                await recording
            if record is not None:
                await self.jot(record)
            outcome = await self.download(outcome)
            await self.settle(index)
        except _JournalBroke:
            return  # reported once, for the whole batch, by report_journal_failure
        except Exception as exc:  # a bug in the batch itself
            self.deliver(_Failed(exc))
            return
        finally:
            if recording is not None:
                await _settled(recording)
        self.deliver(outcome)

    async def from_entry(
        self, index: int, request: GenerationRequest, entry: JournalEntry
    ) -> Outcome | None:
        """An outcome straight from the journal, or None when there is work left."""
        step = resume_step(entry.state)
        if step is ResumeStep.REPORT and entry.task is not None:
            if entry.state is EntryState.FAILED:
                failed = TaskFailedError(entry.task)
                return Outcome(index, request, entry.task, error=failed, from_journal=True)
            path = Path(entry.path) if entry.path else None
            if self.download_to is not None and (path is None or not path.exists()):
                return None  # finished, but its image still has to be saved
            return Outcome(index, request, entry.task, path=path, from_journal=True)
        if step is ResumeStep.UNCONFIRMED:
            if self.resend_unconfirmed:
                await self.jot(lambda j: j.mark_resend(index))
                return None
            known = f" (the provider named task {entry.task_id!a})" if entry.task_id else ""
            # With many workers, the create may be another worker's of this run.
            when = (
                "by a worker that stopped before its answer came (in this run or an earlier one)"
                if self.claims is not None
                else "in an earlier run"
            )
            unconfirmed = UnconfirmedCreateError(
                f"input {index}: a create was sent {when} but its answer never "
                f"confirmed a task{known}; the provider may have created (and billed) one. "
                "It is not sent again unless resend_unconfirmed=True",
                index=index,
            )
            return Outcome(index, request, error=unconfirmed, from_journal=True)
        return None  # POLL: poll again; CREATE: nothing was created, try again

    async def create(
        self, index: int, request: GenerationRequest, entry: JournalEntry | None
    ) -> tuple[Task, asyncio.Task[None] | None] | Outcome:
        """Create the input's task; with it, its ``created`` record on its way (if any).

        Raises:
            _JournalBroke: The journal failed before the create was sent.
        """
        if (
            entry is not None
            and entry.task is not None
            and resume_step(entry.state) in (ResumeStep.POLL, ResumeStep.REPORT)
        ):
            return entry.task, None  # created in an earlier run: never create it twice
        if self.refused is not None:
            error = _not_sent_for(self.refused, index)
            await self.record_create_failure(index, request, error)
            return Outcome(index, request, error=error)
        if not await self.may_create(index):
            raise _JournalBroke
        self.creating += 1
        try:
            created = await self.send(index, request)
        finally:
            self.creating -= 1
            self.report_journal_failure()
        emit = self.ops.emit
        if emit is not None and not isinstance(created, Outcome) and created[1] is None:
            # Without a journal, at once; with one, record_created tells it
            # once the journal has the task (see there).
            await emit(TaskEvent(created[0], None, index))
        return created

    async def send(
        self, index: int, request: GenerationRequest
    ) -> tuple[Task, asyncio.Task[None] | None] | Outcome:
        """Send one create and record what came of it.

        A created task's record is not waited for here: polling starts while
        it is written, and :meth:`run` waits for it before the task's next
        record and before the outcome (so no outcome, and no later record,
        gets ahead of it).
        """
        hooks = None
        if self.journal is not None:

            async def sending() -> None:
                await self.jot(lambda j: j.record_sending(index, request))

            async def not_sent(error: BananaError) -> None:
                await self.jot(lambda j: j.record_error(index, request, error))

            hooks = SendHooks(sending, not_sent)
        try:
            # Validated in prepare(). A 429 is sent again until the deadline:
            # it was not processed, and only the deadline ends a prompt for it.
            task = await self.ops.create(request, self.timeout, hooks)
        except _JournalBroke:
            raise  # the journal failed before this attempt was sent
        except BananaError as exc:
            if isinstance(exc, AuthenticationError) and exc.status_code == 401:
                # 401 is the key itself; a 403 may be one model's refusal.
                self.refused = self.refused or exc
            await self.record_create_failure(index, request, exc)
            return Outcome(index, request, error=exc)
        except Exception as exc:
            error = self.unexpected(exc, f"input {index}: the create")
            await self.record_create_failure(index, request, error)
            return Outcome(index, request, error=error)
        recording = None
        if self.journal is not None:
            # Counted as creating until its record is made: the journal's
            # failure is reported once every created id is known to it or
            # listed as unrecorded (see report_journal_failure).
            self.creating += 1
            recording = asyncio.get_running_loop().create_task(
                self.record_created(index, task), name=f"banana_async-batch-{index}-created"
            )
        return task, recording

    async def record_created(self, index: int, task: Task) -> None:
        """Record a created task, then tell its creation event.

        The event waits for the record: a listener may act on the id (store
        it, show it) as a task that is safe from a crash. The wait's own
        events wait for this one (see :meth:`wait`), so each task's events
        stay in order.
        """
        try:
            await self.jot(lambda j: j.record_created(index, task))
        except _JournalBroke:
            if not await self.holds(index, task.id):
                self.lost_id(index, task.id)
            raise
        finally:
            self.creating -= 1
            self.report_journal_failure()
        emit = self.ops.emit
        if emit is not None:
            await emit(TaskEvent(task, None, index))

    def unexpected(self, exc: Exception, what: str) -> BananaError:
        """One input's failure that nothing foresaw, as its outcome's error.

        Logged with its traceback (it is a bug somewhere). A client closed
        under a batch that is still running is no bug: each input left gets
        an outcome saying so, with its task if one was created, so that a
        caller still reading learns every id and never waits forever.
        """
        if self.ops.closed():
            closed = APIConnectionError(
                f"{what} did not happen: the BananaClient was closed", request_sent=False
            )
            closed.__cause__ = exc
            return closed
        logger.exception("%s failed unexpectedly", what)
        error = _Unexpected(f"{what} failed unexpectedly: {exc!r}")
        error.__cause__ = exc
        return error

    async def record_create_failure(
        self, index: int, request: GenerationRequest, error: BananaError
    ) -> None:
        try:
            if _may_have_created(error):
                task_id = _carried_id(error)
                await self.jot(
                    lambda j: j.record_unconfirmed(index, request, error, task_id=task_id)
                )
            else:
                await self.jot(lambda j: j.record_error(index, request, error))
        except _JournalBroke:
            task_id = _carried_id(error)
            if task_id is not None and not await self.holds(index, task_id):
                self.lost_id(index, task_id)
            raise

    async def wait(
        self,
        index: int,
        request: GenerationRequest,
        task: Task,
        recording: asyncio.Task[None] | None,
    ) -> tuple[Outcome, Callable[[JournalStore], Awaitable[None]] | None]:
        """Poll the task to its end: its outcome, and the journal call that records it.

        The record is made by :meth:`run`, once the input's slot is free.
        ``recording`` is the task's ``created`` record on its way: the wait's
        events come after the creation event it tells.
        """
        try:
            done = await self.ops.wait(
                task, self.timeout, self.poll_interval, self.changes(index, recording)
            )
        except TaskFailedError as exc:
            failed = exc
            return Outcome(index, request, exc.task, error=exc), (
                lambda j: j.record_finished(index, failed.task)
            )
        except TaskTimeoutError as exc:
            # Still CREATED in the journal: a resumed run polls it again.
            timed_out = exc
            return Outcome(index, request, exc.task or task, error=exc), (
                lambda j: j.note_error(index, timed_out)
            )
        except BananaError as exc:
            other = exc
            return Outcome(index, request, task, error=exc), (lambda j: j.note_error(index, other))
        except Exception as exc:
            error = self.unexpected(exc, f"input {index}: waiting for task {task.id}")
            return Outcome(index, request, task, error=error), (
                lambda j: j.note_error(index, error)
            )
        return Outcome(index, request, done), (lambda j: j.record_finished(index, done))

    def changes(self, index: int, recording: asyncio.Task[None] | None) -> Changed | None:
        """The wait's :data:`Changed`: after ``recording`` (if any), and never for a lost task."""
        changed = changes(self.ops.emit, index)
        if changed is None or recording is None:
            return changed
        after: Changed = changed

        async def after_record(task: Task, previous: TaskStatus | None) -> None:
            if not recording.done():
                await asyncio.wait([recording])
            # A task the journal failed to record told no creation event
            # (its id is in the JournalError): it tells no later one either.
            if not recording.cancelled() and recording.exception() is None:
                await after(task, previous)

        return after_record

    async def download(self, outcome: Outcome) -> Outcome:
        if self.download_to is None or not outcome.ok or outcome.task is None:
            return outcome
        error: BananaError
        task = outcome.task
        try:
            path = await self.ops.download(task, self.download_to)
        except OSError as exc:
            error = DownloadError(
                f"could not save the image of task {task.id} in {self.download_to}: {exc}",
                url=task.image_url,
                reason="io_error",
            )
        except BananaError as exc:
            error = exc
        except Exception as exc:
            error = self.unexpected(exc, f"input {outcome.index}: downloading task {task.id}")
        else:
            await self.jot(lambda j: j.record_download(outcome.index, path))
            return attrs.evolve(outcome, path=path)
        await self.jot(lambda j: j.note_error(outcome.index, error))
        return attrs.evolve(outcome, error=error)

    # -- consumer -----------------------------------------------------------------

    async def cancel(self, producer: asyncio.Task[None]) -> None:
        """Cancel the producer and every worker, and wait until all have unwound.

        The wait is finished even if the caller is cancelled meanwhile (no
        worker may outlive the journal it writes to); that cancellation is
        then raised, never swallowed.
        """
        pending = [producer, *self.workers]
        for task in pending:
            task.cancel()
        gathered = asyncio.gather(*pending, return_exceptions=True)
        cancelled: asyncio.CancelledError | None = None
        while not gathered.done():
            try:
                await asyncio.shield(gathered)
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled


def run(
    operations: BatchOperations,
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    options: BatchOptions,
) -> AsyncGenerator[Outcome, None]:
    """Check the inputs and options at once, then return the outcome iterator.

    Raises:
        InvalidRequestError: a single string or no iterable as ``inputs``, or bad options
            (see :meth:`BatchOptions.check`).
    """
    if isinstance(inputs, str | bytes):
        raise InvalidRequestError("inputs must be an iterable of prompts, not a single string")
    if not isinstance(inputs, Iterable | AsyncIterable):
        raise InvalidRequestError(
            f"inputs must be an iterable of prompts, not {type(inputs).__name__}"
        )
    options.check()
    return _results(_Batch(operations, options), inputs, options.journal)


async def _results(
    batch: _Batch,
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    journal: str | os.PathLike[str] | Journal | JournalStore | None,
) -> AsyncGenerator[Outcome, None]:
    async with contextlib.AsyncExitStack() as stack:
        if journal is not None:
            # Opened here: only a run that starts holds the journal's lock.
            batch.journal = await stack.enter_async_context(
                open_store(journal, batch=batch.batch_name)
            )
            if isinstance(batch.journal, ClaimingStore):
                batch.claims = batch.journal
            await _bind(batch.journal, batch.ops.provider)
            if isinstance(batch.journal, PostgresStore) and isinstance(inputs, list | tuple):
                # Known in full: checked against the other workers' before any create.
                fingerprint, count = await asyncio.to_thread(
                    inputs_fingerprint, tuple(inputs), batch.defaults
                )
                await batch.journal.check_inputs(fingerprint, count)
        producer = asyncio.create_task(batch.produce(inputs), name="banana_async-batch-producer")
        try:
            while True:
                item = await batch.outcomes.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                batch.undelivered.release()
                batch.read(item)
                yield item
        finally:
            await batch.cancel(producer)


async def _bind(journal: JournalStore, provider: tuple[str, str, str]) -> None:
    """Tie the journal to the batch's provider: ids mean nothing anywhere else.

    Raises:
        JournalError: the journal belongs to another provider, or cannot be written.
    """
    try:
        await journal.bind_provider(*provider)
    except JournalError:
        raise
    except Exception as exc:
        raise JournalError(
            f"the journal {journal.name} failed ({error_text(exc)}); nothing was sent",
            path=journal.name,
        ) from exc
