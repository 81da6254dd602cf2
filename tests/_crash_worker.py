"""One journaled batch in a process of its own, for the crash-loop tests to kill.

Usage: python _crash_worker.py SETTINGS_JSON

The settings: ``base_url`` (the fake provider), ``prompts`` (a file, one
prompt a line), ``journal`` (a SQLite file or a ``postgresql://`` URL),
``batch`` and ``lease`` (Postgres only), ``concurrency``, ``download_to``
(a folder or null).

Prints one JSON line per step, flushed at once so that a killed worker's
lines stay: ``{"started": ...}`` once the journal is open, ``{"created": ...}``
when a task's creation event comes (its id is in the journal by then), and
``{"outcome": ...}`` per outcome the batch yields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import banana_async as ba
from banana_async.journal import JournalStore, PostgresStore, SQLiteStore

API_KEY = "sk-test-0123456789abcdef"


def _say(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def _created(event: ba.TaskEvent) -> None:
    if event.previous is None:  # the task's creation, told once the journal has it
        _say(created=event.index, task_id=event.task.id)


async def main(settings: dict[str, Any]) -> None:
    prompts = Path(settings["prompts"]).read_text(encoding="utf-8").splitlines()
    journal: str = settings["journal"]
    async with contextlib.AsyncExitStack() as stack:
        store: JournalStore
        if journal.startswith("postgresql://"):
            shared = await PostgresStore.open(
                journal, batch=settings["batch"], lease=settings["lease"]
            )
            store = await stack.enter_async_context(shared)
            _say(started=shared.worker, run=shared.run)
        else:
            store = await stack.enter_async_context(await SQLiteStore.open(journal))
            _say(started=journal, run=None)
        client = await stack.enter_async_context(
            ba.BananaClient(API_KEY, base_url=settings["base_url"], poll_interval=0.05, timeout=600)
        )
        outcomes = client.generate_many(
            prompts,
            concurrency=settings["concurrency"],
            journal=store,
            download_to=settings["download_to"],
            on_status=_created,
        )
        async with contextlib.aclosing(outcomes):
            async for outcome in outcomes:
                _say(
                    outcome=outcome.index,
                    ok=outcome.ok,
                    task_id=outcome.task.id if outcome.task is not None else None,
                    from_journal=outcome.from_journal,
                    error_type=type(outcome.error).__name__ if outcome.error else None,
                    path=str(outcome.path) if outcome.path is not None else None,
                )


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
