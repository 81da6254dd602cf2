"""Reading ``batch``'s FILE: text or JSON Lines, lazily, one input per line.

Blank lines and ``#`` comments are skipped; a line that is not a valid input
still takes its index, so that a journal matches the same lines on resume.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from banana_async.cli.output import one_line
from banana_async.errors import InvalidRequestError
from banana_async.models import GenerationRequest, request_from

if TYPE_CHECKING:
    from banana_async.cli.progress import Stats
    from banana_async.models import BatchInput

__all__ = ["FileScan", "Line", "PromptFile", "request_from_json", "scan"]

_REQUEST_FIELDS: Final = ("prompt", "model", "resolution", "size", "image_urls")
_BOM: Final = b"\xef\xbb\xbf"


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
class FileScan:
    """What one pass over a prompt file found.

    Attributes:
        inputs: How many lines are inputs (not blank, not comments).
        all_objects: Whether every input starts with ``{`` (and there is one).
    """

    inputs: int
    all_objects: bool


def scan(path: Path) -> FileScan:
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
    return FileScan(inputs, all_objects and inputs > 0)


def request_from_json(text: str, defaults: dict[str, Any]) -> GenerationRequest:
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
class Line:
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


class PromptFile:
    """A prompt file read lazily, one input per line that is not blank or a comment.

    The same file always gives the same inputs at the same indexes, which is
    what lets a journal resume a batch. ``lines`` maps the index of each input
    read and not yet reported to its line, and so stays small.
    """

    def __init__(self, path: Path, *, jsonl: bool, defaults: dict[str, Any], stats: Stats) -> None:
        self.path = path
        self.jsonl = jsonl
        self.lines: dict[int, Line] = {}
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
                        item = request_from_json(text, self._defaults)
                    except InvalidRequestError as exc:
                        problem = one_line(exc)
                prompt: str | None = item.prompt if isinstance(item, GenerationRequest) else text
                if problem is not None:
                    item = _BAD_LINE
                    prompt = None
                self.lines[index] = Line(number, prompt, problem)
                self._stats.read += 1
                index += 1
                yield item
