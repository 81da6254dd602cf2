"""``banana-async status ID``: query one task's status once."""

from __future__ import annotations

import argparse

from banana_async.cli.common import RunState, api_client
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.output import json_line, task_lines, task_record, to_stdout

__all__ = ["run"]


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Print the task's status; exit 0 whenever the query itself succeeded."""
    async with api_client(args) as client:
        task = await client.get(args.task_id)
    if args.json:
        to_stdout(json_line(task_record(task)))
    elif args.quiet:
        to_stdout(task.status.value)
    else:
        for line in task_lines(task):
            to_stdout(line)
    return ExitCode.OK
