"""``banana-async batch FILE --out DIR``: an image for every input of a prompt file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from banana_async.cli.common import (
    RunState,
    api_client,
    check_defaults,
    consume,
    request_defaults,
)
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.output import Shown, emit, error_of, prompt_of, to_stderr
from banana_async.cli.progress import PROGRESS_INTERVAL, Progress, Stats, duration
from banana_async.cli.prompt_file import PromptFile, scan
from banana_async.errors import InvalidRequestError

if TYPE_CHECKING:
    from banana_async.models import Outcome

__all__ = ["run"]


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Run the batch; exit 1 if any input failed.

    Raises:
        InvalidRequestError: FILE is missing, or the options are not valid.
    """
    if args.resend_unconfirmed and args.journal is None:
        # Without a journal nothing is known to be unconfirmed: the flag
        # would do nothing, and silence would suggest it did.
        raise InvalidRequestError("--resend-unconfirmed needs --journal")
    path = Path(args.file)
    if not await asyncio.to_thread(path.is_file):
        raise InvalidRequestError(f"cannot read {path}: no such file")
    show_progress = not (args.json or args.quiet)
    defaults = request_defaults(args)
    check_defaults(args, defaults)
    found = None
    if show_progress or args.format == "auto":
        found = await asyncio.to_thread(scan, path)
    jsonl = args.format == "jsonl" or (
        args.format == "auto"
        and (path.suffix.lower() == ".jsonl" or (found is not None and found.all_objects))
    )
    stats = Stats(total=found.inputs if found else None, concurrency=args.concurrency)
    state.stats = stats
    state.journal = args.journal
    state.resumable = True
    prompts = PromptFile(path, jsonl=jsonl, defaults=defaults, stats=stats)

    def show(outcome: Outcome) -> Shown:
        line = prompts.lines.pop(outcome.index, None)
        error, error_type = error_of(outcome)
        if line is not None and line.problem is not None:
            error, error_type = line.problem, InvalidRequestError.__name__
        return Shown(
            outcome,
            where=f"line {line.number}" if line is not None else f"#{outcome.index}",
            line=line.number if line is not None else None,
            prompt=line.prompt if line is not None else prompt_of(outcome),
            error=error,
            error_type=error_type,
        )

    label = f"batch {path.name}"
    progress = Progress(stats, label, enabled=show_progress, interval=PROGRESS_INTERVAL)
    async with api_client(args, requests_per_second=args.requests_per_second) as client:
        with contextlib.closing(prompts.inputs()) as inputs:
            outcomes = client.generate_many(
                inputs,
                concurrency=args.concurrency,
                timeout=args.timeout,
                poll_interval=args.poll_interval,
                download_to=args.out,
                journal=args.journal,
                resend_unconfirmed=args.resend_unconfirmed,
                on_status=progress.on_status,
                **defaults,
            )
            async with progress:
                await consume(outcomes, progress, stats, show, lambda s: emit(args, s))
    if show_progress:
        to_stderr(
            f"{stats.finished} inputs in {duration(stats.elapsed())}: {stats.ok} done, "
            f"{stats.failed} failed; images in {args.out}"
        )
    return ExitCode.OK if stats.failed == 0 else ExitCode.FAILED
