"""``banana-async journal JOURNAL [--batch NAME]``: every input of a journaled batch.

Reads a batch in a Postgres journal (as no worker: it claims nothing, so the
batch may be running) or a SQLite journal (only while no batch has it open:
its lock keeps everyone out), and prints one line per recorded input, whichever worker ran it,
then the count in each state.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path

from banana_async.cli.common import RunState, warn_if_password
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.output import json_line, to_stdout
from banana_async.errors import InvalidRequestError, JournalError
from banana_async.journal import Journal, JournalEntry, PostgresStore
from banana_async.journal.postgres import is_postgres_url

__all__ = ["entry_record", "run"]

# How many batch names the usage error without --batch lists.
_NAMES_SHOWN = 10


def entry_record(entry: JournalEntry) -> dict[str, object]:
    """One entry as a JSON line: index, state, prompt, task id, file, error."""
    return {
        "index": entry.index,
        "state": entry.state.value,
        "prompt": entry.request.prompt if entry.request is not None else entry.raw_input,
        "task_id": entry.task_id,
        "file": entry.path,
        "error": entry.error,
        "error_type": entry.error_type,
    }


def _read_file(path: Path) -> list[JournalEntry]:
    if not path.is_file():
        raise JournalError(f"no journal at {path}", path=str(path))
    with Journal.open(path, exclusive=False) as journal:
        return list(journal.entries())


async def _batch_names(url: str) -> str:
    """The batches of the journal at ``url``, as the usage error without --batch lists them."""
    try:
        names = await PostgresStore.batch_names(url, limit=_NAMES_SHOWN + 1)
    except JournalError as exc:
        return f"its batches cannot be listed ({exc})"
    if not names:
        return "it has no batch yet"
    more = ", ..." if len(names) > _NAMES_SHOWN else ""
    return "its batches, newest first: " + ", ".join(names[:_NAMES_SHOWN]) + more


async def _read(args: argparse.Namespace) -> list[JournalEntry]:
    if is_postgres_url(args.journal):
        warn_if_password(args.journal)
        if not args.batch:
            raise InvalidRequestError(
                "a postgresql:// journal needs --batch NAME; " + await _batch_names(args.journal)
            )
        async with await PostgresStore.open(args.journal, batch=args.batch, join=False) as store:
            return await store.entries()
    if args.batch is not None:
        raise InvalidRequestError("--batch needs a postgresql:// journal")
    return await asyncio.to_thread(_read_file, Path(args.journal))


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Print the batch's entries and the count in each state; exit 0.

    Raises:
        InvalidRequestError: ``--batch`` missing for a Postgres URL, or given for a file.
        JournalError: the journal cannot be read.
    """
    entries = await _read(args)
    counts = Counter(entry.state.value for entry in entries)
    if args.json:
        for entry in entries:
            to_stdout(json_line(entry_record(entry)))
        return ExitCode.OK
    if not args.quiet:
        for entry in entries:
            detail = entry.path or entry.error or ""
            to_stdout(
                f"{entry.index:>6} {entry.state.value:<11} {entry.task_id or '-':<24} {detail}"
            )
    summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    to_stdout(f"{len(entries)} inputs recorded" + (f": {summary}" if summary else ""))
    return ExitCode.OK
