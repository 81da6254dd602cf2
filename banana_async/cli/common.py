"""What the commands share: the client from the options, request defaults, the Ctrl-C note."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import warnings
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from banana_async.cli.output import to_stderr
from banana_async.client import API_KEY_ENV, RATE_LIMIT_URL_ENV, BananaClient
from banana_async.dialects import ResolutionIgnoredWarning, get_dialect
from banana_async.errors import InvalidRequestError
from banana_async.journal.postgres import has_password, is_postgres_url
from banana_async.models import request_from

if TYPE_CHECKING:
    from banana_async.cli.output import Shown
    from banana_async.cli.progress import Progress, Stats
    from banana_async.models import Outcome

__all__ = [
    "RunState",
    "api_client",
    "check_defaults",
    "consume",
    "later_hint",
    "prepare_out",
    "request_defaults",
]


NO_SUCH_TASK: Final = (
    "no such task: a wrong id, another provider's (see --dialect, --base-url), "
    "or one the provider no longer keeps"
)
"""What ``status`` and ``download`` say of an id the provider does not know (a 404)."""


def later_hint(task_ids: list[str], out: str | None) -> str:
    """How to look at tasks later and save their images once they are done."""
    ids = " ".join(task_ids)
    folder = out if out is not None else "DIR"
    images = "image" if len(task_ids) == 1 else "images"
    return (
        f"check later with `banana-async status {task_ids[0]}`, and save the {images} "
        f"once done with `banana-async download {ids} --out {folder}` "
        "(image URLs expire after about a day)"
    )


def _writable_folder(path: Path) -> None:
    """Create the folder ``path`` if missing and prove a file can be written in it.

    Raises:
        InvalidRequestError: a file is in the way, the folder cannot be made,
            or nothing can be written in it.
    """
    if path.exists() and not path.is_dir():
        raise InvalidRequestError(
            f"--out {path} is a file, not a folder: --out names the folder the images go in"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequestError(
            f"--out {path}: cannot create the folder ({exc.strerror or exc})"
        ) from None
    try:
        # The same kind of write a download does: a temporary file, then gone.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".banana-check-"):
            pass
    except OSError as exc:
        raise InvalidRequestError(
            f"--out {path}: cannot write in this folder ({exc.strerror or exc})"
        ) from None


async def prepare_out(out: str) -> Path:
    """Check ``--out`` before anything is created: no task is paid for that cannot be saved.

    Raises:
        InvalidRequestError: ``out`` is a file, or a folder that cannot be
            made or written in.
    """
    path = Path(out)
    await asyncio.to_thread(_writable_folder, path)
    return path


class RunState:
    """What the command was doing, for the message after Ctrl-C.

    Attributes:
        stats: The running batch's counts, if the command runs a batch.
        journal: The batch's journal path, if it has one.
        task_id: The task ``generate`` created, once it has.
        out: The folder the images go in, for the hint after Ctrl-C.
        manifest: The batch's manifest file, once it is open.
        resumable: Whether running the command again can resume its work.
        terminated: Whether SIGTERM stopped the command (rather than Ctrl-C).
        interrupts: How many Ctrl-Cs came (a second one cuts the stop short).
    """

    def __init__(self) -> None:
        self.stats: Stats | None = None
        self.journal: str | None = None
        self.task_id: str | None = None
        self.out: str | None = None
        self.manifest: str | None = None
        self.resumable = False
        # Set when SIGTERM, not Ctrl-C, stopped the command (exit 143, not 130).
        self.terminated = False
        # Set at the first Ctrl-C (a second one cuts the stop short).
        self.interrupts = 0

    def interrupted(self) -> str:
        """The line to print after Ctrl-C: how far the command got, how to go on."""
        if self.stats is not None:
            stats = self.stats
            message = (
                f"interrupted: {stats.ok} done, {stats.failed} failed, "
                f"{stats.in_flight()} created task(s) were in flight"
            )
            # A create on the wire has no task id yet, so no status event:
            # it is not among those counted.
            message += (
                " (creates still unanswered are not counted: the journal has them as "
                "'sending', reported as unconfirmed when the batch resumes)."
                if self.journal is not None
                else " (creates still unanswered are not counted)."
            )
            if self.manifest is not None:
                message += f" What finished is listed in {self.manifest}."
            if not self.resumable:
                return message
            if self.journal is not None:
                return (
                    f"{message} Run the same command again (same FILE, --journal "
                    f"{self.journal}) to resume: tasks already created are polled "
                    "again, never created twice."
                )
            message += " Pass --journal PATH to make a batch resumable."
            ids = [stats.task_ids[index] for index in sorted(stats.task_ids)]
            if ids:
                # Paid for, and recorded nowhere but here.
                message += f" The tasks in flight may still finish: {later_hint(ids, self.out)}."
            return message
        if self.task_id is not None:
            return (
                f"interrupted; task {self.task_id} was created and may still finish: "
                + later_hint([self.task_id], self.out)
            )
        return "interrupted"


def api_client(
    args: argparse.Namespace, *, requests_per_second: float | None = None
) -> BananaClient:
    """A client for the real API, configured by the options and the environment.

    Raises:
        InvalidRequestError: no API key in the environment.
    """
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise InvalidRequestError(
            f"no API key: set the {API_KEY_ENV} environment variable (the key is not "
            "taken as an option, which would leave it in shell history)"
        )
    options: dict[str, Any] = {}
    rate_limit_url: str | None = getattr(args, "rate_limit_url", None)
    if rate_limit_url is not None:  # else the client reads the environment
        warn_if_redis_password(rate_limit_url)
        options["rate_limit_url"] = rate_limit_url
    if getattr(args, "allow_unshared", False):
        options["allow_unshared"] = True
    poll_interval: float | None = getattr(args, "poll_interval", None)
    if poll_interval is not None:
        options["poll_interval"] = poll_interval
    return BananaClient(
        key,
        dialect=args.dialect,
        base_url=args.base_url,
        allow_unknown_models=getattr(args, "allow_unknown_models", False),
        requests_per_second=requests_per_second,
        **options,
    )


def request_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The generation options, as keywords for a request."""
    return {
        "model": args.model,
        "resolution": args.resolution,
        "size": args.size,
        "image_urls": args.image_urls,
    }


def check_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Refuse a bad --model or --image-url once, before any input is read.

    Raises:
        InvalidRequestError: the options do not make a valid request.
    """
    request = request_from("check", **defaults)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionIgnoredWarning)  # shown once per task later
        get_dialect(args.dialect).validate(request, allow_unknown_models=args.allow_unknown_models)


async def consume(
    outcomes: AsyncGenerator[Outcome, None],
    progress: Progress,
    stats: Stats,
    show: Callable[[Outcome], Shown],
    emit: Callable[[Shown], None],
) -> None:
    """Report each outcome of a batch as it comes, counting it and moving the progress."""
    async with contextlib.aclosing(outcomes) as results:
        async for outcome in results:
            shown = show(outcome)
            stats.add(outcome)
            if shown.expected:
                stats.expected_failures += 1
            emit(shown)
            progress.update()


def warn_if_password(url: str | None) -> None:
    """Warn once when a ``postgresql://`` URL on the command line carries a password.

    Every user of the machine can read a process's arguments (``ps``); the
    password belongs in ``~/.pgpass`` or ``$PGPASSWORD``, which asyncpg reads.
    """
    if is_postgres_url(url) and url is not None and has_password(url):
        to_stderr(
            "warning: the journal URL carries a password, which every user of this machine "
            "can read (ps); put it in ~/.pgpass or $PGPASSWORD instead"
        )


def warn_if_redis_password(url: str) -> None:
    """Warn once when a ``--rate-limit-url`` on the command line carries a password.

    Every user of the machine can read a process's arguments (``ps``), not
    its environment: the same URL in ``$BANANA_RATE_LIMIT_URL`` keeps the
    password to the user. (redis-py reads no password variable of its own.)
    """
    if urlsplit(url).password is not None or "password=" in urlsplit(url).query.lower():
        to_stderr(
            "warning: the --rate-limit-url carries a password, which every user of this "
            f"machine can read (ps); put the URL in ${RATE_LIMIT_URL_ENV} instead"
        )
