"""The public data model: tasks, their statuses, requests, and a batch's outcomes.

These classes are frozen attrs classes with Python names; the providers'
wire names and shapes live in :mod:`banana_async.dialects`, never here.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from banana_async._checks import split_http_url
from banana_async.errors import BananaError, InvalidRequestError, shorten

__all__ = [
    "AspectRatio",
    "BatchInput",
    "GenerationRequest",
    "Model",
    "OnStatus",
    "Outcome",
    "Resolution",
    "Task",
    "TaskEvent",
    "TaskStatus",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life: ``queued -> processing -> completed | failed``.

    ``UNKNOWN`` stands for a status word the client does not recognise; such a
    task is treated as still running (the word is kept in
    :attr:`Task.raw_status`).
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        """Whether the status is ``COMPLETED`` or ``FAILED``, which never change again."""
        return self is TaskStatus.COMPLETED or self is TaskStatus.FAILED

    @classmethod
    def from_word(cls, word: str) -> TaskStatus:
        """Read a provider's status word, case-insensitively.

        Resellers use different words for the same states (``succeeded``,
        ``in_queue``, ``cancelled``, ...); anything unrecognised becomes
        :attr:`UNKNOWN`.
        """
        found = _STATUS_WORDS.get(word)  # the documented spelling, most of the time
        if found is not None:
            return found
        key = word.strip().lower().replace("-", "_").replace(" ", "_")
        return _STATUS_WORDS.get(key, cls.UNKNOWN)


_STATUS_WORDS: dict[str, TaskStatus] = {
    **dict.fromkeys(["queued", "pending", "waiting", "submitted", "in_queue"], TaskStatus.QUEUED),
    **dict.fromkeys(["processing", "running", "generating", "in_progress"], TaskStatus.PROCESSING),
    **dict.fromkeys(
        ["completed", "succeeded", "success", "done", "finished"], TaskStatus.COMPLETED
    ),
    **dict.fromkeys(
        ["failed", "fail", "error", "timeout", "canceled", "cancelled"], TaskStatus.FAILED
    ),
}


class Model(enum.StrEnum):
    """Model names known to at least one dialect; plain strings work too.

    Which dialect lists which model is in :mod:`banana_async.dialects`.
    """

    NANO_BANANA = "nano-banana"
    NANO_BANANA_FAST = "nano-banana-fast"
    NANO_BANANA_PRO = "nano-banana-pro"
    NANO_BANANA_PRO_STABLE = "nano-banana-pro-stable"
    NANO_BANANA_2 = "nano-banana-2"
    NANO_BANANA_2_STABLE = "nano-banana-2-stable"


class Resolution(enum.StrEnum):
    """Output resolution; only some models honour it (see the dialects)."""

    R1K = "1k"
    R2K = "2k"
    R4K = "4k"


class AspectRatio(enum.StrEnum):
    """Aspect ratio, sent as ``size``. Omit it to let the model choose."""

    R1_1 = "1:1"
    R16_9 = "16:9"
    R9_16 = "9:16"
    R4_3 = "4:3"
    R3_4 = "3:4"
    R3_2 = "3:2"
    R2_3 = "2:3"
    R5_4 = "5:4"
    R4_5 = "4:5"
    R21_9 = "21:9"


DEFAULT_MODEL = Model.NANO_BANANA_2  # listed by both dialects


def _plain_str(value: object) -> str | None:
    """``value`` as a plain ``str`` if it is text (a subclass too), else None.

    Whatever is sent or stored is a real string: a subclass (``numpy.str_``,
    a StrEnum) becomes its plain value, and an object that only claims to be
    one (a mock with ``spec=str``) is not text.
    """
    if type(value) is str:
        return value
    if isinstance(value, str):
        try:
            return str.__str__(value)
        except TypeError:
            return None
    return None


def _to_model(value: str) -> str:
    text = _plain_str(value)
    if text is None or not text.strip():
        raise InvalidRequestError(f"model must be a non-empty string, not {value!r}")
    value = text
    problem = text_problem(value)
    if problem is not None:
        raise InvalidRequestError(f"model {value!a} cannot be sent: {problem}")
    name = value.strip()
    try:
        return Model(name)
    except ValueError:
        return name  # a model the provider added later; the dialect decides


def _to_resolution(value: object) -> Resolution | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return Resolution(value.strip().lower())
        except ValueError:
            pass
    allowed = ", ".join(r.value for r in Resolution)
    raise InvalidRequestError(f"unknown resolution {value!r}; expected one of {allowed}")


def _to_size(value: object) -> AspectRatio | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return AspectRatio(value.strip())
        except ValueError:
            pass
    allowed = ", ".join(r.value for r in AspectRatio)
    raise InvalidRequestError(f"unknown size (aspect ratio) {value!r}; expected one of {allowed}")


# What a host name may hold once IDNA-encoded (letters, digits, "-", "_", ".").
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_MAX_HOST_LENGTH = 253


def text_problem(text: str) -> str | None:
    r"""Why ``text`` cannot be sent as UTF-8 (a lone surrogate), or None when it can.

    JSON and Python strings may hold lone surrogates (``"\ud800"``), which no
    UTF-8 encoder accepts: such text can reach neither the provider nor a
    journal unchanged.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"it holds a lone surrogate at position {exc.start}, which is not valid Unicode"
    return None


def url_problem(url: object) -> str | None:
    """Why ``url`` is not a usable http(s) URL, or None when it is usable.

    One check for every URL the package acts on: reference images before a
    create, a completed task's ``image_url`` and the download itself. It
    refuses what the HTTP stack would choke on later (an unclosed IPv6
    bracket, a port out of range, a host name that no DNS could hold).

    Args:
        url: Anything; only a string can be a URL.

    Returns:
        A short reason (to follow "the URL ..."), or None.
    """
    if not isinstance(url, str):
        return f"is a {type(url).__name__}, not a string"
    text = _text_problem_of_url(url)
    if text is not None:
        return text
    parts = split_http_url(url)
    if isinstance(parts, str):
        return parts
    host = parts.hostname
    return None if host and _usable_host(host) else "has an invalid host name"


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _text_problem_of_url(url: str) -> str | None:
    if _CONTROL_CHARACTERS.search(url):
        return "contains control characters"
    if not url.isascii() and text_problem(url) is not None:
        return "is not valid Unicode text"
    return None


@functools.lru_cache(maxsize=1024)
def _usable_host(host: str) -> bool:
    """Whether DNS could hold ``host`` (or it is an IP address).

    Cached: every request of a client goes to one or two hosts, and images
    come from a few CDNs, so each is checked once rather than per request.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(encoded) <= _MAX_HOST_LENGTH and bool(_HOST_NAME.match(encoded))


def _to_image_urls(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    # A lone string is iterable too; taking it letter by letter is never meant.
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidRequestError("image_urls must be a list of URL strings")
    urls: list[str] = []
    for item in value:
        url = _plain_str(item)
        if url is None:
            raise InvalidRequestError(f"image_urls must hold strings, not {item!r}")
        problem = url_problem(url)
        if problem is not None:
            shown = ascii(shorten(url, 80))
            raise InvalidRequestError(
                f"reference image {shown} {problem} "
                "(the providers take http(s) URLs, not file paths or inline data)"
            )
        urls.append(url)
    return tuple(urls)


def _to_prompt(value: str) -> str:
    text = _plain_str(value)
    if text is None or not text.strip():
        raise InvalidRequestError("prompt must be a non-empty string")
    problem = text_problem(text)
    if problem is not None:
        raise InvalidRequestError(f"the prompt cannot be sent: {problem}")
    return text


@attrs.frozen
class GenerationRequest:
    """What to generate: the body of a create-task request.

    Values are checked and normalised on construction; an invalid one raises
    :class:`~banana_async.InvalidRequestError` before anything is sent.
    Dialect-specific rules (which models exist, how many reference images)
    are checked by the client against its dialect.

    Attributes:
        prompt: What to draw; must not be blank.
        model: A :class:`Model` or any model name (known names become members).
        resolution: ``1k``, ``2k`` or ``4k`` (case-insensitive), or None.
        size: An aspect ratio such as ``16:9``, or None for the model's default.
        image_urls: Reference image URLs (http or https) that guide the style.
    """

    prompt: str = attrs.field(converter=_to_prompt)
    model: str = attrs.field(default=DEFAULT_MODEL, converter=_to_model)
    resolution: Resolution | None = attrs.field(default=None, converter=_to_resolution)
    size: AspectRatio | None = attrs.field(default=None, converter=_to_size)
    image_urls: tuple[str, ...] = attrs.field(default=(), converter=_to_image_urls)


@attrs.frozen
class Task:
    """A generation task as last reported by the provider.

    Attributes:
        id: The provider's task id (opaque).
        status: The normalised status.
        raw_status: The status word exactly as the provider sent it.
        created: When the provider created the task (timezone-aware, UTC).
        model: The model as the provider echoes it (navo echoes display names).
        object: The provider's object type, e.g. ``image.generation``.
        image_url: Where the image is, once completed; it expires in about a day.
        error: The failure message, once failed.
    """

    id: str
    status: TaskStatus
    raw_status: str = ""
    created: datetime | None = None
    model: str | None = None
    object: str | None = None
    image_url: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """True once the task is completed or failed."""
        return self.status.terminal

    @property
    def ok(self) -> bool:
        """True when the task completed (its image is at :attr:`image_url`)."""
        return self.status is TaskStatus.COMPLETED


def request_from(prompt: str | GenerationRequest, **fields: Any) -> GenerationRequest:
    """Build a request from a prompt and keyword fields, or pass one through.

    Raises:
        InvalidRequestError: a request object was given together with fields,
            or a field is invalid.
    """
    if isinstance(prompt, GenerationRequest):
        given = {k: v for k, v in fields.items() if v is not None}
        if given:
            names = ", ".join(sorted(given))
            raise InvalidRequestError(
                f"pass either a GenerationRequest or keyword fields, not both ({names})"
            )
        return prompt
    kwargs = {k: v for k, v in fields.items() if v is not None}
    return GenerationRequest(prompt, **kwargs)


BatchInput = str | GenerationRequest
"""One input of a batch: a prompt, or a complete request."""


@attrs.frozen
class Outcome:
    """What became of one input of :meth:`~banana_async.BananaClient.generate_many`.

    Attributes:
        index: The input's position (0-based) in the inputs.
        request: The request sent, or None if the input was not a valid request.
        task: The task as last seen, or None if none was created (or it is
            not known whether one was).
        error: Why the input did not produce an image (a :class:`TaskFailedError`,
            :class:`TaskTimeoutError`, a create failure, a download failure, ...),
            or None.
        path: Where the image was saved, with ``download_to``.
        from_journal: True when the outcome was read from the journal of an
            earlier run without any HTTP request.
    """

    index: int
    request: GenerationRequest | None
    task: Task | None = None
    error: BananaError | None = None
    path: Path | None = None
    from_journal: bool = False

    @property
    def ok(self) -> bool:
        """True when the task completed (and its download, if asked for, succeeded)."""
        return self.error is None and self.task is not None and self.task.ok


@attrs.frozen
class TaskEvent:
    """A task was created, or its status changed: what an ``on_status`` callback receives.

    See :meth:`~banana_async.BananaClient.wait` and the "Events" page of the
    documentation for when events come and in what order.

    Attributes:
        task: The task as just seen (its :attr:`~Task.status` is the new status).
        previous: The status the client saw before, or None when the client
            had not seen the task before: it was just created, or this is the
            first answer of a wait given a bare task id.
        index: The input's index inside
            :meth:`~banana_async.BananaClient.generate_many`, else None.
    """

    task: Task
    previous: TaskStatus | None = None
    index: int | None = None


OnStatus = Callable[[TaskEvent], Awaitable[None] | None]
"""An ``on_status`` callback: a plain function of a :class:`TaskEvent`, or an async one."""
