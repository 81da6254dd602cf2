"""A crash-safe record of a batch of generations: states, the store protocol, SQLite.

- :mod:`banana_async.journal.states`: :class:`EntryState`, the one table of
  which state may follow which (:data:`TRANSITIONS`), and what a resumed
  batch does with each (:func:`resume_step`).
- :mod:`banana_async.journal.store`: :class:`JournalStore`, the async
  protocol a batch records through, which a networked store can implement.
- :mod:`banana_async.journal.sqlite`: the embedded default, :class:`Journal`
  (one SQLite file, synchronous) and :class:`SQLiteStore` (the same file
  written from a thread of its own, with group commit).
- :mod:`banana_async.journal.postgres`: :class:`PostgresStore`, one batch
  shared by many workers on many machines (a :class:`ClaimingStore`; needs
  the ``postgres`` extra, asyncpg, loaded only when a store opens).

:func:`open_store` turns what ``generate_many(journal=...)`` accepts into a
store. Every name is importable from here.
"""

from banana_async.journal._entries import JournalEntry, JournalProvider, canonical_request
from banana_async.journal._open import open_store
from banana_async.journal.postgres import PostgresStore
from banana_async.journal.sqlite import SCHEMA_VERSION, Journal, SQLiteStore
from banana_async.journal.states import (
    TRANSITIONS,
    EntryState,
    ResumeStep,
    may_follow,
    resume_step,
    sources,
)
from banana_async.journal.store import ClaimingStore, JournalStore

__all__ = [
    "SCHEMA_VERSION",
    "TRANSITIONS",
    "ClaimingStore",
    "EntryState",
    "Journal",
    "JournalEntry",
    "JournalProvider",
    "JournalStore",
    "PostgresStore",
    "ResumeStep",
    "SQLiteStore",
    "canonical_request",
    "may_follow",
    "open_store",
    "resume_step",
    "sources",
]
