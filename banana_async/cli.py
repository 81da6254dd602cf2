"""The ``banana-async`` command line: ``generate``, ``batch``, ``status`` and ``demo``.

The API key comes from the ``BANANA_API_KEY`` environment variable only: a key
given as an option would end up in shell history and process listings.
Results go to standard output (one JSON object per line with ``--json``);
progress, warnings and errors go to standard error.

Exit codes: 0 everything succeeded, 1 some generation failed, 2 usage error
(bad arguments, no API key), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import sys
import time
import warnings
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self, TextIO

import attrs

from banana_async._version import __version__
from banana_async.batch import BatchInput, Outcome
from banana_async.client import API_KEY_ENV, BananaClient
from banana_async.dialects import ResolutionIgnoredWarning, get_dialect
from banana_async.errors import (
    BananaError,
    InvalidRequestError,
    TaskFailedError,
    TaskTimeoutError,
)
from banana_async.models import AspectRatio, GenerationRequest, Resolution, Task, request_from
from banana_async.testing import FakeBananaServer, TaskScript

__all__ = ["BASE_URL_ENV", "DIALECT_ENV", "build_parser", "main"]

DIALECT_ENV: Final = "BANANA_DIALECT"
"""Environment variable with the default of ``--dialect``."""

BASE_URL_ENV: Final = "BANANA_BASE_URL"
"""Environment variable with the default of ``--base-url``."""

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

DEFAULT_CONCURRENCY: Final = 50
PROGRESS_INTERVAL: Final = 2.0
"""Seconds between plain progress lines (when standard error is not a terminal)."""
RICH_REFRESH: Final = 0.5
"""Seconds between recomputations of the rate and ETA shown on the live bar."""

DEMO_OUT: Final = "banana-demo-out"
DEMO_COUNT: Final = 20
DEMO_POLL_INTERVAL: Final = 0.2
DEMO_DURATIONS: Final = (0.5, 3.0)
"""Range of the fake tasks' random durations in the demo, in seconds."""
DEMO_KEY: Final = "demo-key-not-secret"
"""The fake provider of the demo accepts any key; this one is not a secret."""
DEMO_FAILURE: Final = "content policy violation"

# The demo's prompts; the ones marked True are scripted to fail.
DEMO_PROMPTS: Final[tuple[tuple[str, str, bool], ...]] = (
    ("a cat asleep on a sunny windowsill, watercolour", "4:3", False),
    ("a lighthouse at dusk, oil painting", "16:9", False),
    ("a copyrighted cartoon mouse (the provider refuses this one)", "1:1", True),
    ("a bowl of ramen seen from above, flat lay photo", "1:1", False),
    ("a paper boat on a pond after the rain", "3:2", False),
    ("a fox in a snowy forest at night, moonlight", "9:16", False),
    ("an isometric tiny island with a windmill", "1:1", False),
    ("a vintage robot reading a newspaper", "4:5", False),
    ("a hot air balloon over lavender fields", "16:9", False),
    ("a banana-shaped spaceship landing on the moon", "21:9", False),
    ("a cosy library with a fireplace, pixel art", "4:3", False),
    ("a famous footballer's face on a banknote (the provider refuses this one)", "3:4", True),
    ("a koi pond from above, ink wash painting", "1:1", False),
    ("a steam train crossing a stone viaduct", "16:9", False),
    ("a jar of fireflies on a picnic blanket", "2:3", False),
    ("a street market in the rain, neon signs", "9:16", False),
    ("a snail carrying a tiny house, macro photo", "5:4", False),
    ("a mountain cabin under the northern lights", "16:9", False),
    ("a stack of pancakes with blueberries, studio light", "1:1", False),
    ("an origami crane made of a treasure map", "3:2", False),
)

_REQUEST_FIELDS: Final = ("prompt", "model", "resolution", "size", "image_urls")
_BOM: Final = b"\xef\xbb\xbf"
_PROMPT_PREVIEW: Final = 32

logger = logging.getLogger("banana_async")


# -- argument parsing ---------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before the command and, for convenience, after it too.

    On the subcommands the defaults are suppressed, so that an option given
    before the command is not overwritten by the subcommand's default.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--dialect",
        type=str.lower,
        choices=("nano", "navo"),
        default=default(os.environ.get(DIALECT_ENV) or "nano"),
        help=f"API dialect (default: ${DIALECT_ENV} or nano)",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        default=default(os.environ.get(BASE_URL_ENV) or None),
        help=f"one base URL for creates and queries (default: ${BASE_URL_ENV}, "
        "else the dialect's own hosts)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output: one JSON object per line on stdout, no progress",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress, no summary; print failures and errors only",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log what the client does to stderr (-v: INFO, -vv: DEBUG)",
    )


def _request_options(*, poll_default: float | None) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("generation options")
    group.add_argument("--model", help="model name (default: nano-banana-2)")
    group.add_argument(
        "--size",
        choices=[r.value for r in AspectRatio],
        metavar="RATIO",
        help="aspect ratio: " + ", ".join(r.value for r in AspectRatio),
    )
    group.add_argument(
        "--resolution",
        type=str.lower,
        choices=[r.value for r in Resolution],
        help="output resolution (only some models honour it)",
    )
    group.add_argument(
        "--image-url",
        dest="image_urls",
        action="append",
        metavar="URL",
        help="reference image URL; repeat the option for several",
    )
    group.add_argument(
        "--allow-unknown-models",
        action="store_true",
        help="send a model name the dialect does not list",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="how long to wait for each task (default: 900)",
    )
    group.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=poll_default,
        metavar="SECONDS",
        help="minimum seconds between status queries of a task (default: "
        + ("2, as the providers ask)" if poll_default is None else f"{poll_default:g})"),
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``banana-async`` (reads the environment for defaults)."""
    parser = argparse.ArgumentParser(
        prog="banana-async",
        description="Generate images with the Nano Banana task API.",
        epilog=(
            f"The API key is read from ${API_KEY_ENV} (never from an option). "
            "Exit codes: 0 all done, 1 some generation failed, 2 usage error, "
            "130 interrupted. Try `banana-async demo`: it needs no key and no network."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, top=False)
    request = _request_options(poll_default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate",
        parents=[common, request],
        help="generate one image and download it",
        description="Create one task, wait for it, download its image.",
    )
    generate.add_argument("prompt", help="what to draw")
    generate.add_argument(
        "--out", default=".", metavar="DIR", help="directory for the image (default: .)"
    )

    batch = commands.add_parser(
        "batch",
        parents=[common, request],
        help="generate an image for every line of a file",
        description=(
            "Generate an image for each prompt in FILE: one prompt per line (blank "
            "lines and lines starting with # are skipped), or JSON Lines (objects "
            "with prompt, model, resolution, size, image_urls) when the file ends "
            "in .jsonl or every line is an object. The generation options are "
            "defaults for what a line does not say."
        ),
    )
    batch.add_argument("file", metavar="FILE", help="the prompts")
    batch.add_argument("--out", required=True, metavar="DIR", help="directory for the images")
    batch.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"most tasks in flight at once (default: {DEFAULT_CONCURRENCY})",
    )
    batch.add_argument(
        "--journal",
        metavar="PATH",
        help="SQLite journal: run the same command again to resume without creating any task twice",
    )
    batch.add_argument(
        "--resend-unconfirmed",
        action="store_true",
        help="with --journal: create again the inputs whose create was in flight "
        "when an earlier run stopped (they may be billed twice)",
    )
    batch.add_argument(
        "--requests-per-second",
        type=_positive_float,
        metavar="R",
        help="hard cap on all requests to the API (the provider's limit is learned anyway)",
    )
    batch.add_argument(
        "--format",
        choices=("auto", "text", "jsonl"),
        default="auto",
        help="how FILE is read (default: auto)",
    )

    status = commands.add_parser(
        "status", parents=[common], help="query a task's status once", description=None
    )
    status.add_argument("task_id", metavar="ID", help="the task id")

    demo = commands.add_parser(
        "demo",
        parents=[common, _request_options(poll_default=DEMO_POLL_INTERVAL)],
        help="run a batch against a built-in fake provider (no key, no network)",
        description=(
            "Start a fake provider on this machine and generate a batch of example "
            "images with it; two prompts are scripted to fail, to show how failures "
            "are reported. Needs no API key and no network."
        ),
    )
    demo.add_argument(
        "--out",
        default=DEMO_OUT,
        metavar="DIR",
        help=f"directory for the images (default: {DEMO_OUT})",
    )
    demo.add_argument(
        "--count",
        type=_positive_int,
        default=DEMO_COUNT,
        metavar="N",
        help=f"how many images (default: {DEMO_COUNT})",
    )
    return parser


# -- output -----------------------------------------------------------------------


# Control characters other than newline and tab: a provider's text holding
# them could move the cursor, clear the screen or set the clipboard.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _for_terminal(text: str) -> str:
    r"""``text`` safe to print: control characters and lone surrogates escaped.

    Task ids, status words and error messages come from the provider; a
    lone surrogate (JSON ``"\ud800"``) cannot even be encoded for output.
    """
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _stdout(text: str) -> None:
    print(_for_terminal(text), file=sys.stdout)


def _stderr(text: str) -> None:
    print(_for_terminal(text), file=sys.stderr)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _json_line(record: dict[str, Any]) -> str:
    line = json.dumps(record, ensure_ascii=False)
    if line.isascii() or _for_terminal(line) == line:
        return line
    # Lone surrogates or C1 controls in the provider's text: all as \u escapes.
    return json.dumps(record, ensure_ascii=True)


def _preview(prompt: str | None) -> str:
    if prompt is None:
        return "-"
    text = " ".join(prompt.split())
    if len(text) > _PROMPT_PREVIEW:
        text = text[: _PROMPT_PREVIEW - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _task_record(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "status": task.status.value,
        "raw_status": task.raw_status,
        "model": task.model,
        "created": task.created.isoformat() if task.created is not None else None,
        "image_url": task.image_url,
        "error": task.error,
    }


def _task_lines(task: Task) -> list[str]:
    status = task.status.value
    if task.raw_status and task.raw_status != status:
        status += f" ({task.raw_status})"
    rows = [
        ("task", task.id),
        ("status", status),
        ("model", task.model),
        ("created", task.created.isoformat() if task.created is not None else None),
        ("image_url", task.image_url),
        ("error", task.error),
    ]
    return [f"{name:<10} {value}" for name, value in rows if value]


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a live progress bar replaces it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(_for_terminal(self.format(record)) + "\n")
        except Exception:  # logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    if verbosity <= 0:
        yield
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _show_warning(  # noqa: PLR0917 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    _stderr(f"warning: {message}")


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show the client's warnings as one ``warning: ...`` line each, once per message."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", ResolutionIgnoredWarning)
        warnings.showwarning = _show_warning
        yield


# -- progress ---------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _Stats:
    """Counts of a running batch, for the progress display and the summary."""

    def __init__(self, *, total: int | None, concurrency: int) -> None:
        self.total = total
        self.concurrency = concurrency
        self.read = 0
        self.ok = 0
        self.failed = 0
        self.expected_failures = 0
        self.resumed = 0
        self.started = time.monotonic()

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.ok += 1
        else:
            self.failed += 1
        if outcome.from_journal:
            self.resumed += 1

    def in_flight(self) -> int:
        # Inputs read but not finished; generate_many reads a little ahead of
        # what it has in flight, never more than `concurrency` at the provider.
        return max(0, min(self.read - self.finished, self.concurrency))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Finished inputs per second, not counting those read from a journal."""
        return (self.finished - self.resumed) / max(self.elapsed(), 1e-6)

    def eta(self) -> str:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return "?"
        return _duration(max(0, self.total - self.finished) / rate)

    def line(self, *, count: bool = True) -> str:
        parts = [
            f"{self.ok} done",
            f"{self.failed} failed",
            f"{self.in_flight()} in flight",
            f"{self.rate():.1f}/s",
            f"ETA {self.eta()}",
        ]
        if self.resumed:
            parts.insert(2, f"{self.resumed} from journal")
        if count:
            total = "?" if self.total is None else str(self.total)
            parts.insert(0, f"{self.finished}/{total}")
        return ", ".join(parts)


class _RichBar:
    """A live progress bar on standard error, drawn by ``rich`` (the ``cli`` extra)."""

    def __init__(self, label: str, total: int | None) -> None:
        # Imported here: rich is optional, and slow to import for --json runs.
        from rich.console import Console  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        from rich.progress import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            # Results on stdout stay on stdout when it is a file or a pipe.
            redirect_stdout=_isatty(sys.stdout),
            redirect_stderr=True,
        )
        self._task = self._progress.add_task(label, total=total, stats="")

    def start(self) -> None:
        self._progress.start()

    def update(self, stats: _Stats) -> None:
        self._progress.update(self._task, completed=stats.finished, stats=stats.line(count=False))

    def stop(self) -> None:
        self._progress.stop()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rich_bar(label: str, total: int | None) -> _RichBar | None:
    """A live bar if standard error is a terminal and rich is installed, else None."""
    if not _isatty(sys.stderr):
        return None
    try:
        return _RichBar(label, total)
    except ImportError:
        return None


class _Progress:
    """Shows a batch's progress on standard error while it runs.

    A live ``rich`` bar on a terminal; otherwise (no rich, or stderr is a file)
    a plain line every ``interval`` seconds and one at the end.
    """

    def __init__(self, stats: _Stats, label: str, *, enabled: bool, interval: float) -> None:
        self._stats = stats
        self._label = label
        self._enabled = enabled
        self._interval = interval
        self._bar: _RichBar | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if not self._enabled:
            return self
        self._bar = _rich_bar(self._label, self._stats.total)
        if self._bar is not None:
            self._bar.start()
            self._bar.update(self._stats)
        self._ticker = asyncio.create_task(self._tick(), name="banana_async-cli-progress")
        return self

    async def _tick(self) -> None:
        interval = RICH_REFRESH if self._bar is not None else self._interval
        while True:
            await asyncio.sleep(interval)
            self._show()

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.update(self._stats)
        else:
            _stderr(f"{self._label}: {self._stats.line()}")

    def update(self) -> None:
        """Note a finished input (the plain lines only come every ``interval``)."""
        if self._bar is not None:
            self._bar.update(self._stats)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(self._stats)
            self._bar.stop()
        elif exc_type is None:
            _stderr(f"{self._label}: {self._stats.line()}")


# -- reading a prompt file ----------------------------------------------------------


def _decode(raw: bytes, number: int) -> tuple[str, str | None]:
    """A line's text (stripped) and, if it is not valid UTF-8, what is wrong."""
    if number == 1:
        raw = raw.removeprefix(_BOM)
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "replace").strip(), f"not valid UTF-8 ({exc.reason})"


def _skipped(text: str) -> bool:
    return not text or text.startswith("#")


@attrs.frozen
class _FileScan:
    inputs: int
    all_objects: bool


def _scan(path: Path) -> _FileScan:
    """Count a prompt file's inputs and see whether all are JSON objects (one pass)."""
    inputs = 0
    all_objects = True
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            text, _ = _decode(raw, number)
            if _skipped(text):
                continue
            inputs += 1
            all_objects = all_objects and text.startswith("{")
    return _FileScan(inputs, all_objects and inputs > 0)


def _request_from_json(text: str, defaults: dict[str, Any]) -> GenerationRequest:
    """One JSON Lines object as a request; fields it leaves out come from ``defaults``.

    Raises:
        InvalidRequestError: not a JSON object, unknown fields, invalid values.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise InvalidRequestError("not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"expected a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(_REQUEST_FIELDS))
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(_REQUEST_FIELDS)}"
        )
    fields = {**defaults, **{k: v for k, v in data.items() if v is not None}}
    prompt = fields.pop("prompt", None)
    if not isinstance(prompt, str):
        raise InvalidRequestError("'prompt' must be a string")
    return request_from(prompt, **fields)


@attrs.define
class _Line:
    """Where an input came from, kept until its outcome has been reported."""

    number: int
    prompt: str | None
    problem: str | None = None


_BAD_LINE: Final = ""
"""Stands in for a line that is not a valid input.

generate_many turns an empty prompt into a failed outcome at the line's own
index without any HTTP (and a journal records it as such), so a bad line
keeps its place and the indexes of the lines after it never move.
"""


class _PromptFile:
    """A prompt file read lazily, one input per line that is not blank or a comment.

    The same file always gives the same inputs at the same indexes, which is
    what lets a journal resume a batch. ``lines`` maps the index of each input
    read and not yet reported to its line, and so stays small.
    """

    def __init__(self, path: Path, *, jsonl: bool, defaults: dict[str, Any], stats: _Stats) -> None:
        self.path = path
        self.jsonl = jsonl
        self.lines: dict[int, _Line] = {}
        self._defaults = defaults
        self._stats = stats

    def inputs(self) -> Generator[BatchInput, None, None]:
        """The inputs, read from the open file one line at a time."""
        index = 0
        with self.path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                text, problem = _decode(raw, number)
                if _skipped(text):
                    continue
                item: BatchInput = text
                if problem is None and self.jsonl:
                    try:
                        item = _request_from_json(text, self._defaults)
                    except InvalidRequestError as exc:
                        problem = _one_line(exc)
                prompt: str | None = item.prompt if isinstance(item, GenerationRequest) else text
                if problem is not None:
                    item = _BAD_LINE
                    prompt = None
                self.lines[index] = _Line(number, prompt, problem)
                self._stats.read += 1
                index += 1
                yield item


# -- running --------------------------------------------------------------------------


class _Run:
    """What the command was doing, for the message after Ctrl-C."""

    def __init__(self) -> None:
        self.stats: _Stats | None = None
        self.journal: str | None = None
        self.task_id: str | None = None
        self.resumable = False

    def interrupted(self) -> str:
        if self.stats is not None:
            stats = self.stats
            message = (
                f"interrupted: {stats.ok} done, {stats.failed} failed, "
                f"{stats.in_flight()} were in flight."
            )
            if not self.resumable:
                return message
            if self.journal is not None:
                return (
                    f"{message} Run the same command again (same FILE, --journal "
                    f"{self.journal}) to resume: tasks already created are polled "
                    "again, never created twice."
                )
            return (
                f"{message} Tasks already created were not recorded; pass --journal "
                "PATH to make a batch resumable."
            )
        if self.task_id is not None:
            return (
                f"interrupted; task {self.task_id} was created and may still finish: "
                f"check it with `banana-async status {self.task_id}`"
            )
        return "interrupted"


def _api_client(
    args: argparse.Namespace, *, requests_per_second: float | None = None
) -> BananaClient:
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise InvalidRequestError(
            f"no API key: set the {API_KEY_ENV} environment variable (the key is not "
            "taken as an option, which would leave it in shell history)"
        )
    options: dict[str, Any] = {}
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


def _request_defaults(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "resolution": args.resolution,
        "size": args.size,
        "image_urls": args.image_urls,
    }


def _check_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Refuse a bad --model or --image-url once, before any input is read."""
    request = request_from("check", **defaults)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionIgnoredWarning)  # shown once per task later
        get_dialect(args.dialect).validate(request, allow_unknown_models=args.allow_unknown_models)


async def _generate(args: argparse.Namespace, run: _Run) -> int:
    prompt: str = args.prompt
    defaults = _request_defaults(args)
    async with _api_client(args) as client:
        created = await client.create(prompt, **defaults)
        run.task_id = created.id
        if not (args.json or args.quiet):
            _stderr(f"created task {created.id}; waiting for it to finish...")
        try:
            task = await client.wait(created, timeout=args.timeout)
        except TaskFailedError as exc:
            _report_task(args, exc.task, None, exc)
            return EXIT_FAILED
        except TaskTimeoutError as exc:
            _report_task(args, exc.task or created, None, exc)
            _stderr(f"check it later with `banana-async status {created.id}`")
            return EXIT_FAILED
        try:
            path = await client.download(task, Path(args.out))
        except BananaError as exc:
            _report_task(args, task, None, exc)
            return EXIT_FAILED
    _report_task(args, task, path, None)
    return EXIT_OK


def _report_task(
    args: argparse.Namespace, task: Task, path: Path | None, error: BananaError | None
) -> None:
    if args.json:
        record = {"ok": error is None, **_task_record(task), "path": _str(path)}
        record["error"] = _one_line(error) if error is not None else None
        _stdout(_json_line(record))
    elif args.quiet:
        if path is not None:
            _stdout(str(path))
    else:
        for line in _task_lines(task):
            _stdout(line)
        if path is not None:
            _stdout(f"{'saved':<10} {path}")
    if error is not None:
        _stderr(f"error: {_one_line(error)}")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


async def _status(args: argparse.Namespace, run: _Run) -> int:
    async with _api_client(args) as client:
        task = await client.get(args.task_id)
    if args.json:
        _stdout(_json_line(_task_record(task)))
    elif args.quiet:
        _stdout(task.status.value)
    else:
        for line in _task_lines(task):
            _stdout(line)
    return EXIT_OK


@attrs.frozen
class _Shown:
    """One outcome as the command reports it."""

    outcome: Outcome
    where: str
    line: int | None
    prompt: str | None
    error: str | None
    error_type: str | None
    expected: bool = False

    def record(self) -> dict[str, Any]:
        outcome = self.outcome
        task = outcome.task
        return {
            "index": outcome.index,
            "line": self.line,
            "ok": outcome.ok,
            "task_id": task.id if task is not None else None,
            "status": task.status.value if task is not None else None,
            "image_url": task.image_url if task is not None else None,
            "path": _str(outcome.path),
            "error": self.error,
            "error_type": self.error_type,
            "prompt": self.prompt,
            "from_journal": outcome.from_journal,
        }

    def text(self) -> str:
        outcome = self.outcome
        if outcome.ok:
            word = "ok"
            task = outcome.task
            detail = _str(outcome.path) or (task.image_url if task is not None else None) or ""
        else:
            word = "failed"
            detail = self.error or "failed"
            if self.expected:
                detail += " (expected: scripted by the demo)"
        journal = " (from journal)" if outcome.from_journal else ""
        preview = _preview(self.prompt)
        return f"{word:<6} {self.where:<8} {preview:<{_PROMPT_PREVIEW + 2}} {detail}{journal}"


def _emit(args: argparse.Namespace, shown: _Shown) -> None:
    if args.json:
        record = shown.record()
        if args.command == "demo":
            record["expected_failure"] = shown.expected
        _stdout(_json_line(record))
    elif not args.quiet or not (shown.outcome.ok or shown.expected):
        _stdout(shown.text())


def _error_of(outcome: Outcome) -> tuple[str | None, str | None]:
    if outcome.error is not None:
        return _one_line(outcome.error), type(outcome.error).__name__
    if not outcome.ok:
        return "the task did not complete", None
    return None, None


async def _consume(
    outcomes: AsyncGenerator[Outcome, None],
    progress: _Progress,
    stats: _Stats,
    show: Callable[[Outcome], _Shown],
    emit: Callable[[_Shown], None],
) -> None:
    async with contextlib.aclosing(outcomes) as results:
        async for outcome in results:
            shown = show(outcome)
            stats.add(outcome)
            if shown.expected:
                stats.expected_failures += 1
            emit(shown)
            progress.update()


async def _batch(args: argparse.Namespace, run: _Run) -> int:
    path = Path(args.file)
    if not await asyncio.to_thread(path.is_file):
        raise InvalidRequestError(f"cannot read {path}: no such file")
    show_progress = not (args.json or args.quiet)
    defaults = _request_defaults(args)
    _check_defaults(args, defaults)
    scan = None
    if show_progress or args.format == "auto":
        scan = await asyncio.to_thread(_scan, path)
    jsonl = args.format == "jsonl" or (
        args.format == "auto"
        and (path.suffix.lower() == ".jsonl" or (scan is not None and scan.all_objects))
    )
    stats = _Stats(total=scan.inputs if scan else None, concurrency=args.concurrency)
    run.stats = stats
    run.journal = args.journal
    run.resumable = True
    prompts = _PromptFile(path, jsonl=jsonl, defaults=defaults, stats=stats)

    def show(outcome: Outcome) -> _Shown:
        line = prompts.lines.pop(outcome.index, None)
        error, error_type = _error_of(outcome)
        if line is not None and line.problem is not None:
            error, error_type = line.problem, InvalidRequestError.__name__
        return _Shown(
            outcome,
            where=f"line {line.number}" if line is not None else f"#{outcome.index}",
            line=line.number if line is not None else None,
            prompt=line.prompt if line is not None else _prompt_of(outcome),
            error=error,
            error_type=error_type,
        )

    async with _api_client(args, requests_per_second=args.requests_per_second) as client:
        with contextlib.closing(prompts.inputs()) as inputs:
            outcomes = client.generate_many(
                inputs,
                concurrency=args.concurrency,
                timeout=args.timeout,
                poll_interval=args.poll_interval,
                download_to=args.out,
                journal=args.journal,
                resend_unconfirmed=args.resend_unconfirmed,
                **defaults,
            )
            label = f"batch {path.name}"
            async with _Progress(
                stats, label, enabled=show_progress, interval=PROGRESS_INTERVAL
            ) as progress:
                await _consume(outcomes, progress, stats, show, lambda s: _emit(args, s))
    if show_progress:
        _stderr(
            f"{stats.finished} inputs in {_duration(stats.elapsed())}: {stats.ok} done, "
            f"{stats.failed} failed; images in {args.out}"
        )
    return EXIT_OK if stats.failed == 0 else EXIT_FAILED


def _prompt_of(outcome: Outcome) -> str | None:
    return outcome.request.prompt if outcome.request is not None else None


def _demo_requests(args: argparse.Namespace, count: int) -> list[tuple[GenerationRequest, bool]]:
    requests = []
    for number in range(count):
        prompt, size, fails = DEMO_PROMPTS[number % len(DEMO_PROMPTS)]
        take = number // len(DEMO_PROMPTS)
        if take:
            prompt = f"{prompt}, take {take + 1}"
        fields = _request_defaults(args)
        fields["size"] = fields["size"] or size
        requests.append((request_from(prompt, **fields), fails))
    return requests


async def _demo(args: argparse.Namespace, run: _Run) -> int:
    count: int = args.count
    out = Path(args.out)
    defaults = _request_defaults(args)
    _check_defaults(args, defaults)
    requests = _demo_requests(args, count)
    scripted = {request.prompt for request, fails in requests if fails}
    rng = random.Random()

    def script_for(body: dict[str, Any]) -> TaskScript:
        duration = rng.uniform(*DEMO_DURATIONS)
        if body.get("prompt") in scripted:
            return TaskScript(duration=duration, outcome="fail", error=DEMO_FAILURE)
        return TaskScript(duration=duration)

    stats = _Stats(total=count, concurrency=count)
    run.stats = stats
    human = not (args.json or args.quiet)

    def show(outcome: Outcome) -> _Shown:
        error, error_type = _error_of(outcome)
        prompt = _prompt_of(outcome)
        return _Shown(
            outcome,
            where=f"#{outcome.index}",
            line=None,
            prompt=prompt,
            error=error,
            error_type=error_type,
            expected=not outcome.ok and prompt in scripted,
        )

    def inputs() -> Iterator[BatchInput]:
        for request, _ in requests:
            stats.read += 1
            yield request

    async with FakeBananaServer(duration=DEMO_DURATIONS[1]) as server:
        server.script_for = script_for
        if human:
            _stdout(
                f"banana-async demo: {count} prompts against a fake provider at {server.url} "
                f"({args.dialect} dialect; no API key, no network)."
            )
            if scripted:
                _stdout(
                    f"{len(scripted)} of them "
                    f"{'is' if len(scripted) == 1 else 'are'} scripted to fail, to show "
                    "how a batch reports failures without stopping."
                )
        async with BananaClient(
            DEMO_KEY,
            dialect=args.dialect,
            base_url=server.url,
            poll_interval=args.poll_interval,
            allow_unknown_models=args.allow_unknown_models,
        ) as client:
            outcomes = client.generate_many(
                inputs(),
                concurrency=count,
                timeout=args.timeout,
                download_to=out,
            )
            async with _Progress(stats, "demo", enabled=human, interval=1.0) as progress:
                await _consume(outcomes, progress, stats, show, lambda s: _emit(args, s))
    return _demo_summary(args, stats, out, scripted_count=len(scripted))


def _demo_summary(
    args: argparse.Namespace, stats: _Stats, out: Path, *, scripted_count: int
) -> int:
    unexpected = stats.failed - stats.expected_failures
    as_designed = unexpected == 0 and stats.expected_failures == scripted_count
    if args.json or (args.quiet and as_designed):
        pass
    elif as_designed:
        _stdout(
            f"demo finished as designed: {stats.ok} images saved in {out}/, "
            f"{stats.expected_failures} failed as scripted (expected), 0 unexpected "
            f"failures, in {_duration(stats.elapsed())}."
        )
    else:
        _stdout(
            f"demo did NOT go as designed: {stats.ok} images saved in {out}/, "
            f"{unexpected} unexpected failure(s), {stats.expected_failures} of "
            f"{scripted_count} scripted failure(s) seen."
        )
    return EXIT_OK if as_designed else EXIT_FAILED


_COMMANDS: Final = {
    "generate": _generate,
    "batch": _batch,
    "status": _status,
    "demo": _demo,
}


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    return EXIT_USAGE


def _silence_stdout() -> None:
    """After a broken pipe (``| head``), drop what is still buffered for stdout."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``banana-async`` command line; return the exit code.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return _exit_code(exc)
    command = _COMMANDS[args.command]
    run = _Run()
    with _logging(args.verbose), _warnings_as_lines():
        try:
            get_dialect(args.dialect)
            return asyncio.run(command(args, run))
        except KeyboardInterrupt:
            _stderr(run.interrupted())
            return EXIT_INTERRUPTED
        except InvalidRequestError as exc:
            _stderr(f"error: {_one_line(exc)}")
            return EXIT_USAGE
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_FAILED
        except (BananaError, OSError, sqlite3.Error) as exc:
            _stderr(f"error: {_one_line(exc)}")
            return EXIT_FAILED
