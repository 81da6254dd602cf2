"""From what ``generate_many(journal=...)`` accepts to the store a batch records through."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from banana_async.journal.postgres import PostgresStore, is_postgres_url
from banana_async.journal.sqlite import Journal, SQLiteStore
from banana_async.journal.store import JournalStore

__all__ = ["open_store"]


@asynccontextmanager
async def open_store(
    journal: str | os.PathLike[str] | Journal | JournalStore,
    *,
    batch: str | None = None,
) -> AsyncIterator[JournalStore]:
    """The store for ``journal``, open for the ``async with`` block.

    A path is opened as a :class:`~banana_async.journal.SQLiteStore` (off the event loop) and
    closed at the end, lock and all. A ``postgresql://`` URL is opened as a
    :class:`~banana_async.journal.postgres.PostgresStore` joining batch ``batch``
    (required then), and closed at the end. A :class:`~banana_async.Journal` gets a store over it
    whose thread stops at the end; the journal stays open. Any other
    :class:`JournalStore` is used as it is and never closed: it belongs to
    whoever made it.

    Raises:
        JournalError: The path cannot be opened as a journal (see
            :meth:`~banana_async.Journal.open`), or the database cannot be used.
        ValueError: ``batch`` given for anything but a Postgres URL, or missing for one.
    """
    store: JournalStore
    if is_postgres_url(journal):
        if batch is None:
            raise ValueError("a Postgres journal needs batch=NAME: the batch the workers share")
        store = await PostgresStore.open(str(journal), batch=batch)
    elif batch is not None:
        raise ValueError("batch= names a batch in a Postgres journal (postgresql://...)")
    elif isinstance(journal, Journal):
        store = journal.store()
    elif isinstance(journal, str | os.PathLike):
        store = await SQLiteStore.open(journal)
    else:
        yield journal
        return
    try:
        yield store
    finally:
        await store.aclose()
