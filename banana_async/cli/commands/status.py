"""``banana-async status ID``: query one task's status once."""

from __future__ import annotations

import argparse

from banana_async._checks import error_text
from banana_async.cli.common import NO_SUCH_TASK, RunState, api_client
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.output import json_line, task_lines, task_record, to_stdout
from banana_async.errors import NotFoundError

__all__ = ["run"]


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Print the task's status; exit 0 whenever the query itself succeeded."""
    async with api_client(args) as client:
        try:
            task = await client.get(args.task_id)
        except NotFoundError as exc:
            raise NotFoundError(
                f"task {args.task_id}: {NO_SUCH_TASK} ({error_text(exc)})",
                status_code=exc.status_code,
                body=exc.body,
                headers=exc.headers,
            ) from None
    if args.json:
        to_stdout(json_line(task_record(task)))
    elif args.quiet:
        to_stdout(task.status.value)
    else:
        for line in task_lines(task):
            to_stdout(line)
    return ExitCode.OK
