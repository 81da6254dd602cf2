"""``generate_many``: many prompts, bounded concurrency, one outcome per input.

How the pieces fit:

- A *producer* reads the inputs lazily, one at a time, and only when there
  is room: at most ``concurrency`` tasks are in flight at the provider
  (created, not finished), and at most ``2 * concurrency`` inputs are between
  being read and being handed to the caller. A million-line input is never
  in memory.
- One *worker* (an asyncio task) per input creates its task, waits on it,
  downloads the image if asked, and puts its :class:`Outcome` on a queue.
  Workers never raise for a bad prompt: the error goes into the outcome.
- The caller iterates the outcomes in completion order. Leaving the loop
  early, or being cancelled, cancels the producer and every worker; use
  :func:`contextlib.aclosing` to make that happen at once rather than when
  the generator is garbage-collected.
- With a journal, every step is recorded before the next one starts, so a
  run killed at any moment can be resumed (see :mod:`banana_async.journal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from banana_async.errors import (
    APIConnectionError,
    BananaError,
    DownloadError,
    InvalidRequestError,
    ResponseValidationError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    UnconfirmedCreateError,
)
from banana_async.journal import EntryState, Journal
from banana_async.models import GenerationRequest, Task, request_from

if TYPE_CHECKING:
    from banana_async.client import BananaClient
    from banana_async.journal import JournalEntry

__all__ = ["BatchInput", "Outcome"]

BatchInput = str | GenerationRequest
"""One input of a batch: a prompt, or a complete request."""


@attrs.frozen
class Outcome:
    """What became of one input of :meth:`~banana_async.BananaClient.generate_many`.

    Attributes:
        index: The input's position (0-based) in the inputs.
        request: The request sent, or None if the input was not a valid request.
        task: The task as last seen, or None if none was created (or it is
            not known whether one was).
        error: Why the input did not produce an image (a :class:`TaskFailedError`,
            :class:`TaskTimeoutError`, a create failure, a download failure, ...),
            or None.
        path: Where the image was saved, with ``download_to``.
        from_journal: True when the outcome was read from the journal of an
            earlier run without any HTTP request.
    """

    index: int
    request: GenerationRequest | None
    task: Task | None = None
    error: BananaError | None = None
    path: Path | None = None
    from_journal: bool = False

    @property
    def ok(self) -> bool:
        """True when the task completed (and its download, if asked for, succeeded)."""
        return self.error is None and self.task is not None and self.task.ok


def _may_have_created(error: BananaError) -> bool:
    """Whether a failed create can have made (and billed) a task anyway."""
    if isinstance(error, APIConnectionError):
        return error.request_sent
    # A 5xx may come after the work was done; an unreadable 2xx body was
    # most likely a created task whose answer got mangled.
    return isinstance(error, ServerError | ResponseValidationError)


class _Done:
    """Marks the end of the outcomes on the queue."""


class _Failed:
    """Carries an exception of the producer (a bad input iterable, a bug) to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _aiter(inputs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(inputs, AsyncIterable):
        async for item in inputs:
            yield item
    else:
        for item in inputs:
            yield item


class _Batch:
    """The state of one ``generate_many`` run."""

    def __init__(
        self,
        client: BananaClient,
        *,
        concurrency: int,
        timeout: float | None,
        poll_interval: float | None,
        download_to: Path | None,
        journal: Journal | None,
        resend_unconfirmed: bool,
        defaults: dict[str, Any],
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.download_to = download_to
        self.journal = journal
        self.resend_unconfirmed = resend_unconfirmed
        self.defaults = defaults
        self.in_flight = asyncio.Semaphore(concurrency)
        self.undelivered = asyncio.Semaphore(2 * concurrency)
        self.outcomes: asyncio.Queue[Outcome | _Done | _Failed] = asyncio.Queue()
        self.workers: set[asyncio.Task[None]] = set()

    # -- producer -----------------------------------------------------------------

    async def produce(self, inputs: Iterable[Any] | AsyncIterable[Any]) -> None:
        try:
            index = 0
            async for item in _aiter(inputs):
                await self.undelivered.acquire()
                prepared = self.prepare(index, item)
                if isinstance(prepared, Outcome):
                    self.outcomes.put_nowait(prepared)
                else:
                    self.start(index, *prepared)
                index += 1
            if self.workers:
                await asyncio.gather(*self.workers)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the caller, not lost in a task
            self.outcomes.put_nowait(_Failed(exc))
        else:
            self.outcomes.put_nowait(_Done())

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
        self.client.dialect.validate(
            request, allow_unknown_models=self.client._allow_unknown_models
        )
        return request

    def prepare(
        self, index: int, item: Any
    ) -> Outcome | tuple[GenerationRequest, JournalEntry | None]:
        """Settle an input without HTTP if possible; else what its worker needs.

        Raises:
            InvalidRequestError: the journal holds a different input at this
                index (it belongs to another batch); this ends the batch.
        """
        journal = self.journal
        try:
            request = self.build(index, item)
        except BananaError as exc:
            if journal is not None:
                recorded = journal.get(index)
                if recorded is not None and recorded.request is not None:
                    raise self.mismatch(index, journal) from exc
                journal.record_error(index, None, exc, raw_input=repr(item)[:1000])
            return Outcome(index, None, error=exc)
        if journal is None:
            return request, None
        entry = journal.get(index)
        if entry is None:
            return request, None
        # An entry without a request was an invalid input that created nothing:
        # a corrected input may take its place.
        if entry.request is not None and not journal.request_matches(index, request):
            raise self.mismatch(index, journal)
        resumed = self.from_entry(index, request, entry)
        return resumed if resumed is not None else (request, entry)

    @staticmethod
    def mismatch(index: int, journal: Journal) -> InvalidRequestError:
        return InvalidRequestError(
            f"input {index} differs from the one recorded in the journal "
            f"{journal.path}: the journal belongs to another batch"
        )

    async def run(self, index: int, request: GenerationRequest, entry: JournalEntry | None) -> None:
        try:
            async with self.in_flight:
                created = await self.create(index, request, entry)
                if isinstance(created, Outcome):
                    outcome = created
                else:
                    outcome = await self.wait(index, request, created)
            outcome = await self.download(outcome)
        except Exception as exc:  # a journal write failed, or a bug
            # Not one input's problem: without the journal's durability the
            # batch must stop, and the caller must hear why at once, not after
            # every other worker is done.
            self.outcomes.put_nowait(_Failed(exc))
            return
        self.outcomes.put_nowait(outcome)

    def from_entry(
        self, index: int, request: GenerationRequest, entry: JournalEntry
    ) -> Outcome | None:
        """An outcome straight from the journal, or None when there is work left."""
        state = entry.state
        if state is EntryState.COMPLETED and entry.task is not None:
            path = Path(entry.path) if entry.path else None
            if self.download_to is not None and (path is None or not path.exists()):
                return None  # finished, but its image still has to be saved
            return Outcome(index, request, entry.task, path=path, from_journal=True)
        if state is EntryState.FAILED and entry.task is not None:
            failed = TaskFailedError(entry.task)
            return Outcome(index, request, entry.task, error=failed, from_journal=True)
        if state in (EntryState.SENDING, EntryState.UNCONFIRMED):
            if self.resend_unconfirmed:
                assert self.journal is not None
                self.journal.mark_resend(index)
                return None
            unconfirmed = UnconfirmedCreateError(
                f"input {index}: a create was sent in an earlier run but its answer never "
                "arrived; the provider may have created (and billed) a task. It is not sent "
                "again unless resend_unconfirmed=True",
                index=index,
            )
            return Outcome(index, request, error=unconfirmed, from_journal=True)
        return None  # CREATED: poll again; ERROR: nothing was created, try again

    async def create(
        self, index: int, request: GenerationRequest, entry: JournalEntry | None
    ) -> Task | Outcome:
        journal = self.journal
        if (
            entry is not None
            and entry.task is not None
            and entry.state
            in (
                EntryState.CREATED,
                EntryState.COMPLETED,
            )
        ):
            return entry.task  # created in an earlier run: never create it twice
        if journal is not None:
            journal.record_sending(index, request)
        try:
            task = await self.client._create(request)  # validated in prepare()
        except BananaError as exc:
            if journal is not None:
                if _may_have_created(exc):
                    journal.record_unconfirmed(index, request, exc)
                else:
                    journal.record_error(index, request, exc)
            return Outcome(index, request, error=exc)
        if journal is not None:
            journal.record_created(index, task)
        return task

    async def wait(self, index: int, request: GenerationRequest, task: Task) -> Outcome:
        try:
            done = await self.client.wait(
                task, timeout=self.timeout, poll_interval=self.poll_interval
            )
        except TaskFailedError as exc:
            if self.journal is not None:
                self.journal.record_finished(index, exc.task)
            return Outcome(index, request, exc.task, error=exc)
        except TaskTimeoutError as exc:
            # Still CREATED in the journal: a resumed run polls it again.
            if self.journal is not None:
                self.journal.note_error(index, exc)
            return Outcome(index, request, exc.task or task, error=exc)
        except BananaError as exc:
            if self.journal is not None:
                self.journal.note_error(index, exc)
            return Outcome(index, request, task, error=exc)
        if self.journal is not None:
            self.journal.record_finished(index, done)
        return Outcome(index, request, done)

    async def download(self, outcome: Outcome) -> Outcome:
        if self.download_to is None or not outcome.ok or outcome.task is None:
            return outcome
        error: BananaError
        try:
            path = await self.client.download(outcome.task, self.download_to)
        except OSError as exc:
            error = DownloadError(
                f"could not save the image of task {outcome.task.id} in {self.download_to}: {exc}",
                url=outcome.task.image_url,
                reason="io_error",
            )
        except BananaError as exc:
            error = exc
        else:
            if self.journal is not None:
                self.journal.record_download(outcome.index, path)
            return attrs.evolve(outcome, path=path)
        if self.journal is not None:
            self.journal.note_error(outcome.index, error)
        return attrs.evolve(outcome, error=error)

    # -- consumer -----------------------------------------------------------------

    async def cancel(self, producer: asyncio.Task[None]) -> None:
        pending = [producer, *self.workers]
        for task in pending:
            task.cancel()
        # Wait for every worker to unwind (a journal write in progress completes).
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)


def run(
    client: BananaClient,
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    *,
    concurrency: int,
    timeout: float | None,
    poll_interval: float | None,
    download_to: str | os.PathLike[str] | None,
    journal: str | os.PathLike[str] | Journal | None,
    resend_unconfirmed: bool,
    model: str | None,
    resolution: str | None,
    size: str | None,
    image_urls: Sequence[str] | None,
) -> AsyncGenerator[Outcome, None]:
    """Check the arguments at once, then return the outcome iterator."""
    if isinstance(inputs, str | bytes):
        raise InvalidRequestError("inputs must be an iterable of prompts, not a single string")
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise InvalidRequestError(f"concurrency must be a positive integer, not {concurrency!r}")
    defaults = {"model": model, "resolution": resolution, "size": size, "image_urls": image_urls}
    # Bad defaults fail here, once, rather than once per input.
    request_from("check", **defaults)
    batch = _Batch(
        client,
        concurrency=concurrency,
        timeout=timeout,
        poll_interval=poll_interval,
        download_to=Path(download_to) if download_to is not None else None,
        journal=None,  # opened by the generator: only a run that starts holds its lock
        resend_unconfirmed=resend_unconfirmed,
        defaults=defaults,
    )
    return _results(batch, inputs, journal)


async def _results(
    batch: _Batch,
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    journal: str | os.PathLike[str] | Journal | None,
) -> AsyncGenerator[Outcome, None]:
    own_journal = journal is not None and not isinstance(journal, Journal)
    opened = journal if journal is None or isinstance(journal, Journal) else Journal.open(journal)
    batch.journal = opened
    try:
        producer = asyncio.create_task(batch.produce(inputs), name="banana_async-batch-producer")
        try:
            while True:
                item = await batch.outcomes.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                batch.undelivered.release()
                yield item
        finally:
            await batch.cancel(producer)
    finally:
        if own_journal and opened is not None:
            opened.close()
