"""``banana-async generate PROMPT``: create one task, wait for it, download its image."""

from __future__ import annotations

import argparse
from pathlib import Path

from banana_async.cli.common import (
    RunState,
    api_client,
    check_defaults,
    later_hint,
    prepare_out,
    request_defaults,
)
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.output import (
    json_line,
    one_line,
    path_text,
    task_lines,
    task_record,
    to_stderr,
    to_stdout,
)
from banana_async.errors import BananaError, TaskFailedError, TaskTimeoutError
from banana_async.models import Task, TaskEvent

__all__ = ["run"]


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Generate one image; exit 1 if the task fails, times out or cannot be downloaded."""
    prompt: str = args.prompt
    defaults = request_defaults(args)
    check_defaults(args, defaults)
    client = api_client(args)  # no key: a usage error before the folder is made
    # Before the create: a task whose image cannot be saved is paid for nothing.
    out = await prepare_out(args.out)
    state.out = args.out
    async with client:
        created = await client.create(prompt, **defaults)
        state.task_id = created.id
        human = not (args.json or args.quiet)
        if human:
            to_stderr(f"created task {created.id}; waiting for it to finish...")
        try:
            task = await client.wait(
                created, timeout=args.timeout, on_status=_show_status if human else None
            )
        except TaskFailedError as exc:
            _report(args, exc.task, None, exc)
            return ExitCode.FAILED
        except TaskTimeoutError as exc:
            _report(args, exc.task or created, None, exc)
            to_stderr(later_hint([created.id], args.out))
            return ExitCode.FAILED
        try:
            path = await client.download(task, out)
        except BananaError as exc:
            _report(args, task, None, exc)
            to_stderr(
                f"the task completed; try saving its image again with "
                f"`banana-async download {task.id} --out {args.out}`"
            )
            return ExitCode.FAILED
    _report(args, task, path, None)
    return ExitCode.OK


def _show_status(event: TaskEvent) -> None:
    """Say on standard error where the task stands, once per change of its status."""
    to_stderr(f"task {event.task.id}: {event.task.status}")


def _report(
    args: argparse.Namespace, task: Task, path: Path | None, error: BananaError | None
) -> None:
    if args.json:
        record = {"ok": error is None, **task_record(task), "path": path_text(path)}
        record["error"] = one_line(error) if error is not None else None
        to_stdout(json_line(record))
    elif args.quiet:
        if path is not None:
            to_stdout(str(path))
    else:
        for line in task_lines(task):
            to_stdout(line)
        if path is not None:
            to_stdout(f"{'saved':<10} {path}")
    if error is not None:
        to_stderr(f"error: {one_line(error)}")
