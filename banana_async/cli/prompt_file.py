"""Reading ``batch``'s FILE: text or JSON Lines, lazily, one input per line.

Blank lines and ``#`` comments are skipped; a line that is not a valid input
still takes its index, so that a journal matches the same lines on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import attrs

from banana_async.cli.output import one_line
from banana_async.errors import InvalidRequestError
from banana_async.models import GenerationRequest, request_from

if TYPE_CHECKING:
    from banana_async.cli.progress import Stats
    from banana_async.models import BatchInput

__all__ = ["FileScan", "Line", "PromptFile", "looks_binary", "request_from_json", "scan"]

_REQUEST_FIELDS: Final = ("prompt", "model", "resolution", "size", "image_urls")
_BOM: Final = b"\xef\xbb\xbf"
_CHUNK: Final = 65536


# Control characters other than tab: no prompt a person wrote has them, a
# binary file read as text is full of them.
_CONTROL: Final = frozenset(chr(code) for code in (*range(0x20), 0x7F)) - {"\t"}


def looks_binary(path: Path) -> bool:
    """Whether the file's first 64 KiB hold a NUL byte (what no text file has)."""
    with path.open("rb") as file:
        return b"\0" in file.read(_CHUNK)


def _decode(raw: bytes, number: int) -> tuple[str, str | None]:
    """A line's text (stripped) and, if it cannot be a prompt, what is wrong."""
    if number == 1:
        raw = raw.removeprefix(_BOM)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "replace").strip(), f"not valid UTF-8 ({exc.reason})"
    if not _CONTROL.isdisjoint(text):
        return text, "has control characters (is the file binary?)"
    return text, None


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


def _settle(future: asyncio.Future[bytes], line: bytes | None, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(line or b"")


class _LineReader:
    """Reads a stream's lines in a daemon thread, one line per ``readline()`` call.

    Not ``asyncio.to_thread``: a read blocked on a terminal or an idle pipe
    would keep the default executor, and so the interpreter's exit, waiting
    after Ctrl-C. A daemon thread blocked in a read does not, provided that
    it reads the file descriptor itself: blocked inside a buffered stream it
    would hold that stream's lock, which the interpreter takes on its way out.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._fd: int | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._fd = stream.fileno()
        self._pending = b""
        self._asks: queue.SimpleQueue[asyncio.Future[bytes]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="banana-stdin", daemon=True)
        self._thread.start()

    def _line(self) -> bytes:
        if self._fd is None:
            return self._stream.readline()
        while b"\n" not in self._pending:
            chunk = os.read(self._fd, _CHUNK)
            if not chunk:
                line, self._pending = self._pending, b""
                return line
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line + b"\n"

    def _work(self) -> None:
        while True:
            future = self._asks.get()
            line: bytes | None = None
            error: BaseException | None = None
            try:
                line = self._line()
            except Exception as exc:  # handed to the reader, not lost in this thread
                error = exc
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, line, error)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                return
            if not line:
                return

    async def readline(self) -> bytes:
        """The next line, or ``b""`` at the end of the stream."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._asks.put(future)
        return await future


class PromptFile:
    """A prompt file read lazily, one input per line that is not blank or a comment.

    The same file always gives the same inputs at the same indexes, which is
    what lets a journal resume a batch. ``lines`` maps the index of each input
    read and not yet reported to its line, and so stays small.

    ``path`` may be an open binary stream instead (standard input for
    ``batch -``): it is read in a thread of its own, so a slow writer never
    holds up the event loop, and with ``jsonl=None`` its format is decided by its
    first input (JSON Lines if it starts with ``{``).
    """

    def __init__(
        self,
        path: Path | BinaryIO,
        *,
        jsonl: bool | None,
        defaults: dict[str, Any],
        stats: Stats,
    ) -> None:
        self.path = path
        self.jsonl = jsonl
        self.lines: dict[int, Line] = {}
        self._defaults = defaults
        self._stats = stats
        self._index = 0

    def inputs(self) -> Generator[BatchInput, None, None]:
        """The inputs of a file, read from the open file one line at a time."""
        if not isinstance(self.path, Path):
            raise TypeError("inputs() reads a file; use stream_inputs() for a stream")
        with self.path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                item = self._item(number, raw)
                if item is not None:
                    yield item[0]

    async def stream_inputs(self) -> AsyncGenerator[BatchInput, None]:
        """The inputs of a stream, each line read in a worker thread."""
        if isinstance(self.path, Path):
            raise TypeError("stream_inputs() reads a stream; use inputs() for a file")
        reader = _LineReader(self.path)
        number = 0
        while True:
            raw = await reader.readline()
            if not raw:
                return
            number += 1
            item = self._item(number, raw)
            if item is not None:
                yield item[0]

    def _item(self, number: int, raw: bytes) -> tuple[BatchInput] | None:
        """The input of one line, or None for a blank line or a comment."""
        text, problem = _decode(raw, number)
        if _skipped(text):
            return None
        if self.jsonl is None:
            self.jsonl = text.startswith("{")
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
        self.lines[self._index] = Line(number, prompt, problem)
        self._stats.read += 1
        self._index += 1
        return (item,)
