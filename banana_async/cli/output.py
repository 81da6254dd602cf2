"""What ``banana-async`` prints: results on stdout, the rest on stderr, all made safe.

Text from the provider (task ids, status words, error messages) is escaped
before it reaches a terminal; an error is shown on one line; ``--json``
gives one object per line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs

from banana_async._checks import error_message
from banana_async._logging import LOG_FORMAT, StderrHandler, env_handler, level_from_env
from banana_async.dialects import ResolutionIgnoredWarning

if TYPE_CHECKING:
    from banana_async.models import Outcome, Task

__all__ = [
    "PROMPT_PREVIEW",
    "Shown",
    "emit",
    "error_of",
    "for_terminal",
    "json_line",
    "log_to_stderr",
    "one_line",
    "path_text",
    "preview",
    "prompt_of",
    "silence_stdout",
    "task_lines",
    "task_record",
    "to_stderr",
    "to_stdout",
    "warnings_as_lines",
]

PROMPT_PREVIEW: Final = 32
"""How many characters of a prompt a result line shows."""

logger = logging.getLogger("banana_async")

# Control characters other than newline and tab: a provider's text holding
# them could move the cursor, clear the screen or set the clipboard. And the
# bidirectional controls (embeddings, overrides, isolates, the marks) and the
# line and paragraph separators: a prompt holding them could show a line
# other than the one printed ("Trojan Source"), or break it in two.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def for_terminal(text: str) -> str:
    r"""``text`` safe to print: control characters and lone surrogates escaped.

    Task ids, status words and error messages come from the provider, and
    prompts from whoever wrote the file; a lone surrogate (JSON ``"\ud800"``)
    cannot even be encoded for output. Control and bidirectional characters
    are shown as ``\x1b`` or ``\u202e``.
    """
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def to_stdout(text: str) -> None:
    """Print a result line, escaped."""
    # Flushed line by line: a reader at the other end of a pipe (`| jq`)
    # sees each outcome as it comes, not all of them at the exit.
    print(for_terminal(text), file=sys.stdout, flush=True)


def to_stderr(text: str) -> None:
    """Print a progress, warning or error line, escaped."""
    print(for_terminal(text), file=sys.stderr)


# The library's messages name its keyword arguments; on the command line
# the same switch is an option.
_OPTION_FOR: Final = (
    ("allow_unknown_models=True", "--allow-unknown-models"),
    ("resend_unconfirmed=True", "--resend-unconfirmed"),
    ("retry_failed=True", "--retry-failed"),
    # The command line has one --base-url for both of the client's URLs.
    ("create_base_url", "--base-url"),
    ("query_base_url", "--base-url"),
    ("base_url", "--base-url"),  # last: the two above contain it
)


def one_line(error: BaseException) -> str:
    """An error's message on one line (its class name if it has no message).

    A keyword argument the message suggests is named as the command's option.
    """
    text = error_message(error, one_line=True)
    for keyword, option in _OPTION_FOR:
        text = text.replace(keyword, option)
    return text


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one line of JSON that is safe to print."""
    line = json.dumps(record, ensure_ascii=False)
    if line.isascii() or for_terminal(line) == line:
        return line
    # Lone surrogates or C1 controls in the provider's text: all as \u escapes.
    return json.dumps(record, ensure_ascii=True)


def preview(prompt: str | None) -> str:
    """The start of a prompt, quoted, on one line (``-`` for none)."""
    if prompt is None:
        return "-"
    text = " ".join(prompt.split())
    if len(text) > PROMPT_PREVIEW:
        text = text[: PROMPT_PREVIEW - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def path_text(path: Path | None) -> str | None:
    """A path as text for output, None kept."""
    return None if path is None else str(path)


def task_record(task: Task) -> dict[str, Any]:
    """A task's fields for ``--json``."""
    return {
        "task_id": task.id,
        "status": task.status.value,
        "raw_status": task.raw_status,
        "model": task.model,
        "created": task.created.isoformat() if task.created is not None else None,
        "image_url": task.image_url,
        "error": task.error,
    }


def task_lines(task: Task) -> list[str]:
    """A task as aligned ``name value`` lines, the empty fields left out."""
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


@attrs.frozen
class Shown:
    """One outcome of a batch as the command reports it."""

    outcome: Outcome
    where: str
    line: int | None
    prompt: str | None
    error: str | None
    error_type: str | None
    expected: bool = False
    seconds: float | None = None
    """Seconds from the task's creation (or a resume) to the outcome, if known."""
    why_expected: str = "scripted by the demo"

    def record(self) -> dict[str, Any]:
        """The outcome's fields for ``--json``."""
        outcome = self.outcome
        task = outcome.task
        return {
            "index": outcome.index,
            "line": self.line,
            "ok": outcome.ok,
            "task_id": task.id if task is not None else None,
            "status": task.status.value if task is not None else None,
            "image_url": task.image_url if task is not None else None,
            "path": path_text(outcome.path),
            "error": self.error,
            "error_type": self.error_type,
            "prompt": self.prompt,
            "from_journal": outcome.from_journal,
        }

    def text(self) -> str:
        """The outcome as one human-readable line."""
        outcome = self.outcome
        if outcome.ok:
            word = "ok"
            task = outcome.task
            detail = path_text(outcome.path) or (task.image_url if task is not None else None) or ""
        else:
            word = "failed"
            detail = self.error or "failed"
            if self.expected:
                detail += f" (expected: {self.why_expected})"
        journal = " (from journal)" if outcome.from_journal else ""
        shown = preview(self.prompt)
        return f"{word:<6} {self.where:<8} {shown:<{PROMPT_PREVIEW + 2}} {detail}{journal}"


def emit(args: argparse.Namespace, shown: Shown) -> None:
    """Print one outcome as the options ask (``--json``, ``--quiet`` or lines)."""
    if args.json:
        record = shown.record()
        if args.command == "demo":
            record["expected_failure"] = shown.expected
        to_stdout(json_line(record))
    elif not args.quiet or not (shown.outcome.ok or shown.expected):
        to_stdout(shown.text())


def error_of(outcome: Outcome) -> tuple[str | None, str | None]:
    """An outcome's error message and error class name, both None if it succeeded."""
    if outcome.error is not None:
        return one_line(outcome.error), type(outcome.error).__name__
    if not outcome.ok:
        return "the task did not complete", None
    return None, None


def prompt_of(outcome: Outcome) -> str | None:
    """The prompt of an outcome's request, if it has one."""
    return outcome.request.prompt if outcome.request is not None else None


@contextlib.contextmanager
def log_to_stderr(verbosity: int) -> Iterator[None]:
    """Log the client's work to stderr while the command runs (``-v``: INFO, ``-vv``: DEBUG).

    With ``BANANA_LOG`` set too, the more verbose of the two wins, and its
    handler is the only one: no line is written twice.
    """
    wanted = None if verbosity <= 0 else logging.DEBUG if verbosity > 1 else logging.INFO
    if wanted is None:
        with _warnings_as_lines():
            yield
        return
    previous = logger.level
    handler = None
    if env_handler() is None:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    from_env = level_from_env()
    logger.setLevel(wanted if from_env is None else min(wanted, from_env))
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(previous)


class _LevelPrefix(logging.Formatter):
    """``warning: message`` (the level in lower case), as the command's own lines read."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Without ``-v``: the client's WARNING and ERROR records as ``warning: ...`` lines.

    Left to Python's last-resort handler they would print bare; with
    ``BANANA_LOG`` set its handler prints them already.
    """
    if env_handler() is not None:
        yield
        return
    handler = StderrHandler(logging.WARNING)
    handler.setFormatter(_LevelPrefix("%(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _show_warning(  # noqa: PLR0917 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    to_stderr(f"warning: {message}")


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show the client's warnings as one ``warning: ...`` line each, once per message."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", ResolutionIgnoredWarning)
        warnings.showwarning = _show_warning
        yield


def silence_stdout() -> None:
    """After a broken pipe (``| head``), drop what is still buffered for stdout."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
