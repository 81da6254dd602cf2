"""``banana-async download ID... --out DIR``: save the images of finished tasks.

For the tasks a timed-out or interrupted run left behind: each id is queried
once and, if its task completed, its image is saved. Nothing is created, so
nothing is billed. Each id gets one result line; the exit code is 1 if any
image was not saved.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any, Final

import attrs

from banana_async.cli.common import NO_SUCH_TASK, RunState, api_client, prepare_out
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.output import json_line, one_line, path_text, to_stderr, to_stdout
from banana_async.client import BananaClient
from banana_async.errors import APIStatusError, BananaError, NotFoundError
from banana_async.models import Task, TaskStatus

__all__ = ["DOWNLOAD_CONCURRENCY", "Saved", "run"]

DOWNLOAD_CONCURRENCY: Final = 8
"""How many ids are queried and downloaded at once."""


@attrs.frozen
class Saved:
    """What came of one id: the saved file, or why there is none."""

    task_id: str
    task: Task | None
    path: Path | None
    error: str | None

    def record(self) -> dict[str, Any]:
        """The result's fields for ``--json``."""
        task = self.task
        return {
            "task_id": self.task_id,
            "ok": self.path is not None,
            "status": task.status.value if task is not None else None,
            "path": path_text(self.path),
            "error": self.error,
        }

    def text(self) -> str:
        """The result as one human-readable line."""
        if self.path is not None:
            return f"{'saved':<7} {self.task_id} {self.path}"
        return f"{'failed':<7} {self.task_id} {self.error}"


def _not_saved(task_id: str, task: Task) -> str | None:
    """Why a task has no image to save yet, or None if it has one."""
    if task.status is TaskStatus.COMPLETED:
        return None
    if task.status is TaskStatus.FAILED:
        reason = f": {task.error}" if task.error else ""
        return f"the task failed{reason}; it has no image"
    status = task.raw_status or task.status.value
    return f"the task has not finished (status {status}); try again later"


async def _query(client: BananaClient, task_id: str) -> Task | Saved:
    """The task, or the result that says why it cannot be queried."""
    try:
        return await client.get(task_id)
    except NotFoundError:
        return Saved(
            task_id,
            None,
            None,
            NO_SUCH_TASK,
        )
    except BananaError as exc:
        return Saved(task_id, None, None, one_line(exc))


async def _save(client: BananaClient, task_id: str, out: Path) -> Saved:
    task = await _query(client, task_id)
    if isinstance(task, Saved):
        return task
    problem = _not_saved(task_id, task)
    if problem is not None:
        return Saved(task_id, task, None, problem)
    try:
        path = await client.download(task, out)
    except APIStatusError as exc:
        problem = one_line(exc)
        if exc.status_code in {403, 404, 410}:
            # Image hosts answer an expired link this way.
            problem = (
                f"the image URL has expired or is gone (HTTP {exc.status_code} from the "
                "image host); it cannot be saved any more"
            )
        return Saved(task_id, task, None, problem)
    except BananaError as exc:
        return Saved(task_id, task, None, one_line(exc))
    return Saved(task_id, task, path, None)


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Save each task's image; exit 1 if any was not saved.

    Raises:
        InvalidRequestError: no API key, or ``--out`` is not a usable folder.
    """
    task_ids: list[str] = list(dict.fromkeys(args.task_ids))  # each id once, in order
    client = api_client(args)
    out = await prepare_out(args.out)
    turns = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)

    async def save(task_id: str) -> Saved:
        async with turns:
            return await _save(client, task_id, out)

    async with client:
        results = await asyncio.gather(*(save(task_id) for task_id in task_ids))
    failed = 0
    for result in results:
        if result.path is None:
            failed += 1
        if args.json:
            to_stdout(json_line(result.record()))
        elif result.path is not None:
            to_stdout(str(result.path) if args.quiet else result.text())
        else:
            if not args.quiet:
                to_stdout(result.text())
            to_stderr(f"error: task {result.task_id}: {result.error}")
    if not (args.json or args.quiet) and len(results) > 1:
        to_stderr(f"{len(results) - failed} of {len(results)} images saved in {out}")
    return ExitCode.OK if failed == 0 else ExitCode.FAILED
