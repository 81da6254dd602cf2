"""``banana-async batch FILE --out DIR``: an image for every input of a prompt file.

Everything that could make a paid task useless is checked before the first
create: the input file, the options, the output folder (it must be a folder
that can be written in) and the journal (it is opened, and locked, first).
Each outcome is written to ``manifest.jsonl`` in the output folder as it
comes, so which image belongs to which prompt is known without stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from banana_async.cli.common import (
    RunState,
    api_client,
    check_defaults,
    consume,
    later_hint,
    prepare_out,
    request_defaults,
    warn_if_password,
)
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.gallery import Gallery, gallery_line, make_gallery, new_run
from banana_async.cli.output import (
    Shown,
    emit,
    error_of,
    json_line,
    prompt_of,
    to_stderr,
    to_stdout,
)
from banana_async.cli.progress import PROGRESS_INTERVAL, Progress, Stats, duration
from banana_async.cli.prompt_file import PromptFile, looks_binary, scan
from banana_async.errors import InvalidRequestError, JournalError, TaskTimeoutError
from banana_async.journal import PostgresStore, SQLiteStore
from banana_async.journal.postgres import (
    DEFAULT_LEASE,
    LeaseWait,
    inputs_fingerprint,
    is_postgres_url,
    redact_url,
)

if TYPE_CHECKING:
    from banana_async.client import BananaClient
    from banana_async.models import BatchInput, Outcome

__all__ = ["MANIFEST", "STDIN", "manifest_record", "open_manifest", "run", "tell_gallery"]

MANIFEST: Final = "manifest.jsonl"
"""The file in ``--out`` that gets one JSON line per outcome (appended, run after run)."""

STDIN: Final = "-"
"""The FILE that means standard input."""

# How many task ids the "save them later" hint spells out before "...".
_HINT_IDS: Final = 10


def manifest_record(shown: Shown, run: str | None = None) -> dict[str, Any]:
    """One outcome as a line of the manifest: index, line, prompt, task, status, file, ...

    The keys after ``from_journal`` (what was asked, the time taken, the
    error's class, the run) came later: the gallery shows them, and reads
    older manifests without them.

    Args:
        shown: The outcome as the command reports it.
        run: The mark of the run writing the line (see
            :func:`~banana_async.cli.gallery.new_run`), so that the runs
            appending to one manifest can be told apart.
    """
    outcome = shown.outcome
    task = outcome.task
    request = outcome.request
    model = str(request.model) if request is not None else None
    return {
        "index": outcome.index,
        "line": shown.line,
        "prompt": shown.prompt,
        "task_id": task.id if task is not None else None,
        "status": task.status.value if task is not None else None,
        "file": str(outcome.path) if outcome.path is not None else None,
        "ok": outcome.ok,
        "error": shown.error,
        "from_journal": outcome.from_journal,
        "model": model if model is not None or task is None else task.model,
        "size": request.size.value if request is not None and request.size else None,
        "resolution": (
            request.resolution.value if request is not None and request.resolution else None
        ),
        "seconds": round(shown.seconds, 3) if shown.seconds is not None else None,
        "error_type": shown.error_type,
        "run": run,
    }


async def _check_input(args: argparse.Namespace) -> Path | None:
    """FILE as a path, or None for standard input.

    Raises:
        InvalidRequestError: FILE is missing or is a folder.
    """
    if args.file == STDIN:
        return None
    path = Path(args.file)
    if await asyncio.to_thread(path.is_dir):
        raise InvalidRequestError(f"cannot read {path}: it is a folder, not a prompt file")
    if not await asyncio.to_thread(path.is_file):
        raise InvalidRequestError(f"cannot read {path}: no such file")
    if await asyncio.to_thread(looks_binary, path):
        # An image or a program given by mistake: its "lines" would be sent
        # as prompts, each a paid task of garbage.
        raise InvalidRequestError(
            f"{path} looks like a binary file (it has NUL bytes), not a prompt file; "
            "nothing was sent"
        )
    return path


def _journal_problem(journal: Path) -> str | None:
    """What makes ``--journal`` unusable before SQLite is even asked, or None."""
    if journal.is_dir():
        return f"--journal {journal} is a folder, not a journal file"
    parent = journal.parent
    if not parent.is_dir():
        return f"--journal {journal}: the folder {parent} does not exist"
    return None


def _check_flags(args: argparse.Namespace) -> None:
    # Without a journal nothing is known to be unconfirmed or failed: the
    # flag would do nothing, and silence would suggest it did.
    for flag, given in (
        ("--resend-unconfirmed", args.resend_unconfirmed),
        ("--retry-failed", args.retry_failed),
    ):
        if given and args.journal is None:
            raise InvalidRequestError(f"{flag} needs --journal")
    if is_postgres_url(args.journal):
        if not args.batch:
            raise InvalidRequestError(
                "a postgresql:// --journal needs --batch NAME (the same for every worker)"
            )
    elif args.batch is not None:
        raise InvalidRequestError("--batch needs a postgresql:// --journal")
    elif args.lease is not None:
        raise InvalidRequestError("--lease needs a postgresql:// --journal")


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Run the batch; exit 1 if any input failed.

    Raises:
        InvalidRequestError: FILE is missing, or the options or ``--out`` are not valid.
        JournalError: the journal cannot be used.
    """
    _check_flags(args)
    path = await _check_input(args)
    show_progress = not (args.json or args.quiet)
    defaults = request_defaults(args)
    check_defaults(args, defaults)
    client = api_client(args, requests_per_second=args.requests_per_second)
    await _check_journal(args)
    out = await prepare_out(args.out)
    found = None
    if path is not None and (show_progress or args.format == "auto"):
        found = await asyncio.to_thread(scan, path)
    jsonl: bool | None = args.format == "jsonl"
    if args.format == "auto":
        if path is None:
            jsonl = None  # decided by the first input
        else:
            jsonl = path.suffix.lower() == ".jsonl" or (found is not None and found.all_objects)
    stats = Stats(
        total=found.inputs if found else None,
        concurrency=args.concurrency,
        shared=is_postgres_url(args.journal),
    )
    state.stats = stats
    state.journal = args.journal
    if is_postgres_url(args.journal):
        # Never the password on the terminal; the hint names the batch too.
        state.journal = f"{redact_url(args.journal)} --batch {args.batch}"
    state.out = args.out
    state.resumable = True
    prompts = PromptFile(
        path if path is not None else sys.stdin.buffer,
        jsonl=jsonl,
        defaults=defaults,
        stats=stats,
    )
    run_mark = new_run()
    elsewhere: Counter[Path] = Counter()
    waiting: list[str] = []

    def show(outcome: Outcome) -> Shown:
        line = prompts.lines.pop(outcome.index, None)
        error, error_type = error_of(outcome)
        if line is not None and line.problem is not None:
            error, error_type = line.problem, InvalidRequestError.__name__
        if outcome.path is not None and outcome.path.parent.resolve() != out.resolve():
            elsewhere[outcome.path.parent] += 1
        if isinstance(outcome.error, TaskTimeoutError):
            waiting.append(outcome.error.task_id)
        return Shown(
            outcome,
            where=f"line {line.number}" if line is not None else f"#{outcome.index}",
            line=line.number if line is not None else None,
            prompt=line.prompt if line is not None else prompt_of(outcome),
            error=error,
            error_type=error_type,
            seconds=stats.took(outcome.index),
        )

    label = f"batch {path.name if path is not None else 'stdin'}"
    async with Progress(
        stats, label, enabled=show_progress, interval=PROGRESS_INTERVAL
    ) as progress:
        await _run_batch(args, state, client, prompts, out, progress, stats, show, run=run_mark)
    gallery = await make_gallery(out, run=run_mark) if args.gallery else None
    if show_progress:
        _summary(args, stats, out, elsewhere, gallery)
    elif gallery is not None:
        tell_gallery(args, gallery)
    if waiting and not args.json:
        named = waiting[:_HINT_IDS]
        more = (
            f" ({len(waiting) - len(named)} more ids in {out / MANIFEST})"
            if waiting[_HINT_IDS:]
            else ""
        )
        to_stderr(
            f"{len(waiting)} task(s) did not finish in time{more}; " + later_hint(named, args.out)
        )
    return ExitCode.OK if stats.failed == 0 else ExitCode.FAILED


async def _check_journal(args: argparse.Namespace) -> None:
    """Say so when --journal carries a password; refuse a SQLite journal that cannot be used.

    Raises:
        JournalError: the SQLite journal cannot be used.
    """
    warn_if_password(args.journal)
    if args.journal is not None and not is_postgres_url(args.journal):
        problem = await asyncio.to_thread(_journal_problem, Path(args.journal))
        if problem is not None:
            raise JournalError(problem, path=args.journal)


async def _run_batch(  # noqa: PLR0917 - the pieces run() prepared
    args: argparse.Namespace,
    state: RunState,
    client: BananaClient,
    prompts: PromptFile,
    out: Path,
    progress: Progress,
    stats: Stats,
    show: Callable[[Outcome], Shown],
    *,
    run: str,
) -> None:
    """Open the journal, the manifest and the client, in that order, and run the batch."""
    journal: SQLiteStore | PostgresStore | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            journal = await _open_journal(args, state, stats, stack)
            await _run_journaled(
                args, state, client, prompts, out, progress, stats, show, stack, journal, run=run
            )
    except JournalError as exc:
        if not (isinstance(journal, PostgresStore) and journal.lease_lost):
            raise
        # The database was away past the lease (or the worker stalled): the
        # batch is not lost, as the interruption message says of a stop.
        raise JournalError(
            f"{exc}. Run the same command again (same FILE, --journal "
            f"{state.journal}) once the database is back to resume: tasks already "
            "created are polled again, never created twice",
            path=exc.path,
            unrecorded=exc.unrecorded,
        ) from exc


async def _open_journal(
    args: argparse.Namespace, state: RunState, stats: Stats, stack: contextlib.AsyncExitStack
) -> SQLiteStore | PostgresStore | None:
    """Open ``--journal``, closed by ``stack``; a Postgres worker shows its waits in ``stats``."""
    if is_postgres_url(args.journal):
        store = await PostgresStore.open(
            args.journal,
            batch=args.batch,
            lease=DEFAULT_LEASE if args.lease is None else args.lease,
        )
        # When the wait for the database of a stop ends at the latest, once it is told.
        stop_wait: list[float] = []

        def on_wait(left: float) -> None:
            stop_wait.append(time.monotonic() + left)
            to_stderr(_stop_wait_line(state, store, left))

        def waiting() -> str | None:
            if stop_wait:  # the progress line goes on meanwhile: not as if nothing happened
                left = max(0.0, stop_wait[0] - time.monotonic())
                return f"stopping: waiting for the database, ~{left:.0f} s left"
            return _waiting_text(store.waiting_for)

        stack.push_async_callback(store.aclose, on_wait=on_wait)
        stats.waiting = waiting
        return store
    if args.journal is not None:
        return await stack.enter_async_context(await SQLiteStore.open(args.journal))
    return None


def _stop_wait_line(state: RunState, store: PostgresStore, left: float) -> str:
    """What the command says when it stops while the database is away (it waits for it)."""
    if state.terminated:
        skip = "SIGKILL skips the wait"  # more SIGTERMs change nothing (see cli.main)
    elif state.interrupts:
        skip = "Ctrl-C again skips the wait"
    else:
        skip = "Ctrl-C skips the wait"
    return (
        f"stopping: the database is unreachable; waiting up to {left:.0f} s for it, to give "
        f"back the {store.held} input(s) this worker holds ({skip}: the other workers then "
        "take them over once its lease has run out)"
    )


def _waiting_text(waits: tuple[LeaseWait, ...]) -> str | None:
    """Whose inputs a worker waits for, for its progress line (None: it is not waiting)."""
    if not waits:
        return None
    inputs = sum(wait.inputs for wait in waits)
    left = max(wait.left() for wait in waits)
    if len(waits) == 1:
        return (
            f"waiting for worker {waits[0].worker}'s lease on {inputs} input(s), ~{left:.0f} s left"
        )
    return f"waiting for {len(waits)} workers' leases on {inputs} input(s), ~{left:.0f} s left"


async def _run_journaled(  # noqa: PLR0917 - the pieces run() prepared
    args: argparse.Namespace,
    state: RunState,
    client: BananaClient,
    prompts: PromptFile,
    out: Path,
    progress: Progress,
    stats: Stats,
    show: Callable[[Outcome], Shown],
    stack: contextlib.AsyncExitStack,
    journal: SQLiteStore | PostgresStore | None,
    *,
    run: str,
) -> None:
    """Check the inputs against a shared batch, open the manifest and the client, run it."""
    if isinstance(journal, PostgresStore) and isinstance(prompts.path, Path):
        # The whole file is known: a worker given another file (or other
        # options) stops here, before the client creates anything.
        fingerprint, count = await asyncio.to_thread(
            _fingerprint, prompts.path, prompts.jsonl, request_defaults(args)
        )
        await journal.check_inputs(fingerprint, count)
    manifest = await asyncio.to_thread(open_manifest, out)
    stack.callback(manifest.close)
    state.manifest = manifest.name

    def report(shown: Shown) -> None:
        manifest.write(json_line(manifest_record(shown, run)) + "\n")
        manifest.flush()
        emit(args, shown)

    await stack.enter_async_context(client)
    inputs = (
        stack.enter_context(contextlib.closing(prompts.inputs()))
        if isinstance(prompts.path, Path)
        else prompts.stream_inputs()
    )
    outcomes = client.generate_many(
        inputs,
        concurrency=args.concurrency,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        download_to=out,
        journal=journal,
        resend_unconfirmed=args.resend_unconfirmed,
        retry_failed=args.retry_failed,
        on_status=progress.on_status,
        **request_defaults(args),
    )
    await consume(outcomes, progress, stats, show, report)


def _fingerprint(path: Path, jsonl: bool | None, defaults: dict[str, Any]) -> tuple[str, int]:
    """The digest of a prompt file's inputs as the batch reads them (see inputs_fingerprint)."""
    reader = PromptFile(
        path, jsonl=jsonl, defaults=defaults, stats=Stats(total=None, concurrency=1)
    )

    def inputs() -> Iterator[BatchInput]:
        for item in reader.inputs():
            reader.lines.clear()  # what a line was is not needed here
            yield item

    return inputs_fingerprint(inputs(), defaults)


def open_manifest(out: Path) -> TextIO:
    """Open ``out``'s manifest to append outcomes to (the demo writes the same file)."""
    # Readable by its owner only, like the journal: it lists prompts and
    # errors. An existing manifest keeps the mode it has.
    # Opened by path, not through os.fdopen: the file's ``name`` is its path
    # (the Ctrl-C message names it), where fdopen's would be the descriptor.
    return open(
        out / MANIFEST,
        "a",
        encoding="utf-8",
        opener=lambda path, flags: os.open(path, flags, 0o600),
    )


def _summary(
    args: argparse.Namespace,
    stats: Stats,
    out: Path,
    elsewhere: Counter[Path],
    gallery: Gallery | None,
) -> None:
    to_stderr(
        f"{stats.finished} inputs in {duration(stats.elapsed())}: {stats.ok} done, "
        f"{stats.failed} failed; images in {out}, list in {out / MANIFEST}"
    )
    if stats.shared:
        whole = f"banana-async journal {redact_url(args.journal)} --batch {args.batch}"
        if stats.total is not None and stats.finished >= stats.total:
            # No rest for other workers to have run.
            ran = f"this worker ran all {stats.total} inputs of batch {args.batch!r}"
        else:
            of = f" of the {stats.total}" if stats.total is not None else ""
            ran = (
                f"this worker ran {stats.finished}{of} inputs of batch {args.batch!r}; "
                "the other workers ran the rest"
            )
        to_stderr(f"{ran}. The whole batch: {whole}")
    if gallery is not None:
        to_stderr(gallery_line(gallery))
    for folder, count in sorted(elsewhere.items()):
        # A rerun with another --out: what an earlier run saved stays put.
        to_stderr(
            f"{count} image(s) saved by an earlier run stay in {folder} "
            "(nothing was downloaded again)"
        )


def tell_gallery(args: argparse.Namespace, gallery: Gallery) -> None:
    """Where the page is, under ``--json`` or ``--quiet`` (the summary says it otherwise).

    ``--json``: one more line on stdout, the object ``banana-async gallery
    --json`` prints (``gallery``, the counts, ``runs``, ``run_images``);
    ``--quiet``: the summary's line on stderr, keeping stdout to the failures.
    """
    if args.json:
        to_stdout(json_line(gallery.record()))
    else:
        to_stderr(gallery_line(gallery))
