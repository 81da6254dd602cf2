"""The async journal store protocol: what a batch needs from any journal backend.

:class:`~banana_async.journal.SQLiteStore` (one file, embedded, the default)
implements it; a networked store can too. Every method is a coroutine, so a
store may do its I/O on a thread, over a socket or in a server, and never on
the event loop. What every store promises:

- **A record returns once it is durable.** ``await store.record_sending(...)``
  returns only when that record would survive the process being killed
  (SIGKILL) at the next instruction; a batch sends a create only after its
  ``SENDING`` record returned. Several records may share one commit (group
  commit) as long as none returns before its commit does.
- **Every record is a compare-and-set.** The store checks the state it finds
  against :data:`~banana_async.journal.TRANSITIONS`, atomically with the
  write, and raises :class:`ValueError` (changing nothing) for a record the
  table forbids. For one process this only catches bugs; for many workers
  sharing one store it is what makes taking an input safe: of two workers
  recording ``SENDING`` for the same new input, exactly one succeeds.
- **Errors say what happened.** :class:`~banana_async.JournalError` for a
  journal that cannot be used at all (damaged, foreign, locked, another
  provider's); :class:`ValueError` for a record the table forbids (or a
  closed store); anything else (:class:`OSError`, :class:`sqlite3.Error`, a
  lost connection) means the record was not made, and a batch stops creating
  at the first one.

Claiming for many workers is :class:`ClaimingStore`, a protocol that
extends this one (:class:`~banana_async.journal.postgres.PostgresStore`
implements it): a batch claims each input before anything else, settles it
when its outcome is handed over, and takes over what dead workers left. The
states and their table stay as they are, and a single-process batch keeps
using only what is here.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from banana_async.journal._entries import JournalEntry
from banana_async.models import GenerationRequest, Task

__all__ = ["ClaimingStore", "JournalStore"]


@runtime_checkable
class JournalStore(Protocol):
    """An async store of one batch's journal (see the module for its promises).

    ``generate_many(journal=...)`` accepts any object with these methods; it
    never closes a store it was given.
    """

    @property
    def name(self) -> str:
        """The journal as messages name it (a file name, or a URL without its password)."""
        ...

    async def bind_provider(self, dialect: str, create_base_url: str, query_base_url: str) -> None:
        """Tie the journal to one provider, or check that it is the one recorded.

        Raises:
            JournalError: Another provider is recorded.
        """
        ...

    async def get(self, index: int) -> JournalEntry | None:
        """Return the entry of input ``index``, or None if nothing is recorded."""
        ...

    async def request_matches(
        self, index: int, request: GenerationRequest | None, *, raw_input: str | None = None
    ) -> bool:
        """Tell whether the entry of ``index`` was recorded for this same input."""
        ...

    async def record_sending(self, index: int, request: GenerationRequest) -> None:
        """Record that the create of ``request`` is about to be sent (-> ``SENDING``)."""
        ...

    async def record_created(self, index: int, task: Task) -> None:
        """Record the task the create returned, or a newer snapshot (-> ``CREATED``)."""
        ...

    async def record_finished(self, index: int, task: Task) -> None:
        """Record a task that ended (-> ``COMPLETED`` or ``FAILED``)."""
        ...

    async def record_error(
        self,
        index: int,
        request: GenerationRequest | None,
        error: BaseException,
        *,
        raw_input: str | None = None,
    ) -> None:
        """Record that the input failed with certainly nothing created (-> ``ERROR``)."""
        ...

    async def record_unconfirmed(
        self,
        index: int,
        request: GenerationRequest,
        error: BaseException,
        *,
        task_id: str | None = None,
    ) -> None:
        """Record that a create may have created a task (-> ``UNCONFIRMED``)."""
        ...

    async def record_download(self, index: int, path: str | os.PathLike[str]) -> None:
        """Record where the image of a ``COMPLETED`` entry was saved."""
        ...

    async def note_error(self, index: int, error: BaseException) -> None:
        """Keep an error on an entry without changing its state."""
        ...

    async def mark_resend(self, index: int) -> None:
        """Forget a ``SENDING``, ``UNCONFIRMED`` or ``FAILED`` entry so that it is created again."""
        ...

    async def aclose(self) -> None:
        """Finish what was recorded and release the store; closing twice is harmless."""
        ...


@runtime_checkable
class ClaimingStore(JournalStore, Protocol):
    """A store shared by many workers of one batch, each claiming the inputs it runs.

    A batch whose store has these methods claims each input before it reads
    or writes its entry, and runs only those it claimed; it settles an input
    when it hands the input's outcome over; once it has read all its inputs,
    it takes over the inputs that no live worker holds and nobody settled.
    """

    async def claim(
        self, index: int, request: GenerationRequest | None, *, raw_input: str | None = None
    ) -> bool:
        """Claim input ``index`` for this worker; False if another worker has it or settled it.

        Whoever has it, the input is first checked against what the batch
        recorded at ``index`` (and recorded when nothing is).

        Raises:
            JournalError: The batch recorded another input at ``index``.
        """
        ...

    async def settle(self, index: int) -> None:
        """Mark input ``index`` settled (its outcome was handed over) and give up its claim."""
        ...

    async def take_over(self) -> tuple[int, GenerationRequest | None, str | None] | None:
        """Claim an input that a worker left unsettled: its index, request, and raw text.

        Waits while other live workers hold unsettled inputs; None once there are none.
        """
        ...
