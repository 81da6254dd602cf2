"""The two documented dialects of the API, as pure functions of bytes.

A :class:`Dialect` builds the HTTP request for a create or a status query and
reads a response (status, headers, body) into a :class:`~banana_async.Task`,
or raises the matching :mod:`~banana_async.errors` exception. Nothing here
does I/O or needs an event loop, so every rule can be tested with recorded
bodies.

``nano`` and ``navo`` differ in hosts, paths, model lists, how they treat
``resolution``, and how many reference images they take; the response shapes
are shared (:mod:`banana_async._wire`).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Mapping
from typing import Any, overload
from urllib.parse import quote

import attrs
import cattrs
from multidict import CIMultiDict, CIMultiDictProxy

from banana_async import _retry
from banana_async._convert import CONVERTER
from banana_async._wire import WireTask
from banana_async.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
    shorten,
)
from banana_async.models import (
    GenerationRequest,
    Model,
    Resolution,
    Task,
    TaskStatus,
    text_problem,
    url_problem,
)

__all__ = [
    "NANO",
    "NAVO",
    "Dialect",
    "HTTPRequest",
    "HTTPResponse",
    "ResolutionIgnoredWarning",
    "error_for_status",
    "get_dialect",
    "parse_body",
]

# Error bodies end up in exception messages and logs; keep the stored text of
# a large HTML page bounded.
_STORED_BODY_LIMIT = 4096
_ALL_RESOLUTIONS = frozenset(Resolution)


class ResolutionIgnoredWarning(UserWarning):
    """A resolution was given that the chosen model ignores."""


def _headers(value: Mapping[str, str]) -> CIMultiDictProxy[str]:
    if isinstance(value, CIMultiDictProxy):
        return value
    return CIMultiDictProxy(CIMultiDict(value))


@attrs.frozen
class HTTPRequest:
    """An HTTP request to send, without credentials (the client adds those).

    Attributes:
        method: ``GET`` or ``POST``.
        url: The absolute URL.
        body: The JSON body as bytes, or None.
        headers: Headers besides ``Authorization``.
    """

    method: str
    url: str
    body: bytes | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class HTTPResponse:
    """An HTTP response as received: status, headers (case-insensitive) and body."""

    status: int
    headers: CIMultiDictProxy[str] = attrs.field(converter=_headers, factory=dict)
    body: bytes = b""


def _text(body: bytes, limit: int = _STORED_BODY_LIMIT) -> str:
    # A character takes at most 4 bytes: the bytes of limit + 1 characters hold
    # the first ``limit`` whole and at least one byte past them when the body is
    # longer, so a body cut shows the cut mark (the bytes of ``limit`` alone
    # would hold exactly ``limit`` emoji and hide the cut). A character split
    # at the end of the slice decodes to U+FFFD, which the cut drops.
    return shorten(body[: (limit + 1) * 4].decode("utf-8", errors="replace"), limit)


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _looks_like_html(body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        head.startswith(b"<") and b"<html" in head
    )


def _describe(body: bytes) -> str:
    """A short human reading of an error body: its message, title or text."""
    if not body.strip():
        return "empty body"
    if _looks_like_html(body):
        match = _TITLE.search(body[:8192])
        title = match.group(1).decode("utf-8", "replace").strip() if match else ""
        title = shorten(" ".join(title.split()), 200)
        return f"HTML page {title!r}" if title else "an HTML page"
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "msg", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("msg")
            if isinstance(value, str) and value.strip():
                return shorten(" ".join(_readable(value).split()), 200)
    text = " ".join(_text(body, 200).split())
    return text or "empty body"


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    429: RateLimitError,
}


def error_for_status(response: HTTPResponse) -> APIStatusError:
    """The error that a response's HTTP status means, for a status other than 2xx.

    What a status means is decided here, never by the I/O layer: the client
    raises this for an API answer, and a download for an image host's.
    400 and 422 are :class:`~banana_async.BadRequestError`, 401 and 403
    :class:`~banana_async.AuthenticationError`, 404
    :class:`~banana_async.NotFoundError`, 429
    :class:`~banana_async.RateLimitError`, 5xx
    :class:`~banana_async.ServerError`, any other
    :class:`~banana_async.APIStatusError`. The error carries the status, the
    body as (bounded) text, the headers and the ``Retry-After`` delay, and
    its message reads the body (a JSON message, an HTML page's title).

    Args:
        response: The response; only its first few KiB of body are read.

    Returns:
        The error, for the caller to raise.
    """
    status = response.status
    if status in _STATUS_ERRORS:
        cls = _STATUS_ERRORS[status]
    elif 500 <= status <= 599:
        cls = ServerError
    else:
        cls = APIStatusError
    retry_after = _retry.retry_after_from_headers(response.headers, now=time.time())
    what = "unexpected status" if status < 400 else "error"
    location = response.headers.get("Location")
    extra = f" (redirect to {location}; redirects are not followed)" if location else ""
    return cls(
        f"HTTP {status} {what} from the provider: {_describe(response.body)}{extra}",
        status_code=status,
        body=_text(response.body),
        headers=dict(response.headers),
        retry_after=retry_after,
    )


status_error = error_for_status
"""The former name of :func:`error_for_status`."""


# Codes that mean "no error" in a ``code``/``msg`` body: 0 and 200 by the two
# common conventions, and words. Other numbers are the provider's own: the
# documented error example uses code 204 for a failed login.
_SUCCESS_CODES = frozenset({0, 200})
_SUCCESS_WORDS = frozenset({"ok", "success", "succeeded", "true"})


def _code_is_success(code: Any) -> bool:
    if isinstance(code, bool):
        return code
    if isinstance(code, float) and code.is_integer():
        code = int(code)
    if isinstance(code, int):
        return code in _SUCCESS_CODES
    if isinstance(code, str):
        text = code.strip().lower()
        if text.isdigit():
            return _code_is_success(int(text))
        return text in _SUCCESS_WORDS
    return False


def _carried_id(data: dict[str, Any]) -> str | None:
    """The task id a body carries, as text, or None when it has none usable."""
    value = data.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if text.strip() else None


def _unwrap(data: dict[str, Any]) -> dict[str, Any]:
    """Unwrap one ``data`` level; an outer ``code``/``msg`` is kept beside the task."""
    inner = data.get("data")
    if not isinstance(inner, dict) or "id" in data or "status" in data:
        return data
    outer: dict[str, Any] = {
        key: data[key] for key in ("code", "msg") if key in data and key not in inner
    }
    return {**outer, **inner} if outer else inner


def parse_body(response: HTTPResponse) -> dict[str, Any]:
    """Check a response and return its JSON object, one ``data`` level unwrapped.

    A body without a ``status`` but with ``code``/``msg`` is read by its code:
    an error code is a :class:`~banana_async.ProviderError` (carrying the
    task id when the body has one, since a task may exist); a success code
    (0, 200, "ok") or a ``msg`` beside an id returns the body, for the caller
    to read as a task.

    Raises:
        APIStatusError: (or a subclass) for any status other than 2xx.
        ResponseValidationError: the body is empty, not JSON, HTML, or not an object.
        ProviderError: a 2xx body that is an error (``code``/``msg``) rather than a task.
    """
    if not 200 <= response.status <= 299:
        raise error_for_status(response)
    body = response.body
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # Neither an empty body nor an HTML page is JSON, so they are told
        # apart only here, off the path every good response takes.
        raise _unreadable(response) from None
    if not isinstance(data, dict):
        raise ResponseValidationError(
            f"expected a JSON object, got {type(data).__name__}",
            body=_text(body),
            status_code=response.status,
        )
    data = _unwrap(data)
    if "status" not in data and ("code" in data or "msg" in data):
        _check_code(data, response)
    return data


def _unreadable(response: HTTPResponse) -> ResponseValidationError:
    body = response.body
    if not body.strip():
        return ResponseValidationError(
            "the provider sent an empty body", body="", status_code=response.status
        )
    if _looks_like_html(body):
        return ResponseValidationError(
            f"the provider sent {_describe(body)} instead of JSON (often a proxy or gateway error)",
            body=_text(body),
            status_code=response.status,
        )
    return ResponseValidationError(
        f"the provider's response is not JSON: {_describe(body)}",
        body=_text(body),
        status_code=response.status,
    )


def _check_code(data: dict[str, Any], response: HTTPResponse) -> None:
    """Raise :class:`ProviderError` for a ``code``/``msg`` body that reports an error."""
    code = data.get("code")
    task_id = _carried_id(data)
    if code is not None and _code_is_success(code):
        return
    if code is None and task_id is not None:
        return  # a message beside a task id is news about that task, not an error
    msg = data.get("msg")
    msg_text = _readable(msg if isinstance(msg, str) else "" if msg is None else str(msg))
    code_text = _readable("" if code is None else str(code))
    about = f" about task {task_id!a}" if task_id is not None else ""
    raise ProviderError(
        f"the provider reported an error{about} (code {code_text or '?'}): {msg_text or '?'}",
        code=code_text,
        msg=msg_text,
        body=_text(response.body),
        task_id=task_id,
    )


def _structure(data: dict[str, Any], response: HTTPResponse) -> WireTask:
    try:
        wire = CONVERTER.structure(data, WireTask)
    except (cattrs.BaseValidationError, ValueError, TypeError, OverflowError, OSError) as exc:
        problems = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise ResponseValidationError(
            f"the provider's response is not a task: {problems}",
            body=_text(response.body),
            status_code=response.status,
        ) from None
    if not wire.id.strip():
        # A task that can never be queried is no task.
        raise ResponseValidationError(
            "the provider's response has an empty task id",
            body=_text(response.body),
            status_code=response.status,
        )
    problem = text_problem(wire.id)
    if problem is not None:
        # No URL can carry it: the task exists but cannot be polled. Keep the
        # id for a human rather than fail later with an encoding error.
        raise ResponseValidationError(
            f"the provider's task id {wire.id!a} cannot be used: {problem}",
            body=_text(response.body),
            status_code=response.status,
            task_id=wire.id,
        )
    return wire


def _task(wire: WireTask, *, default_status: str | None = None) -> Task:
    raw = wire.status if wire.status is not None else default_status or ""
    status = TaskStatus.from_word(raw)
    error = wire.error
    if status is TaskStatus.COMPLETED:
        problem = "has no image URL" if not wire.image_url else None
        problem = problem or _url_problem(wire.image_url)
        if problem is not None:
            # Waiting longer cannot mend a finished task: it failed to deliver.
            status = TaskStatus.FAILED
            error = f"the provider reported {raw!a} but the task {problem}"
    return Task(
        id=wire.id,
        status=status,
        raw_status=_readable(raw),
        created=wire.created,
        model=_readable(wire.model),
        object=_readable(wire.object),
        image_url=wire.image_url or None,
        error=_readable(error),
    )


@overload
def _readable(text: str) -> str: ...
@overload
def _readable(text: None) -> None: ...
def _readable(text: str | None) -> str | None:
    r"""Text for people with any lone surrogate escaped (``\ud800``).

    JSON may carry one (``"\ud800"``) and Python keeps it, but no stream
    can print it: a task's words and an error's message must be printable.
    Ids and URLs are not touched here: they are refused instead.
    """
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _url_problem(url: str | None) -> str | None:
    problem = url_problem(url)
    return None if problem is None else f"image URL {_shown(url)} {problem}"


def _shown(url: str | None) -> str:
    text = url or ""
    return ascii(shorten(text, 80))


@attrs.frozen
class Dialect:
    """How one reseller spells the API.

    Use :data:`NANO` or :data:`NAVO`, or :func:`attrs.evolve` one of them to
    describe a reseller that differs (another host, a new model).

    Attributes:
        name: ``nano`` or ``navo``.
        create_base_url: Default base URL for creates.
        query_base_url: Default base URL for status queries.
        create_path: Path of the create endpoint below the base URL.
        query_path: Path of the status query, with ``{id}`` for the task id.
        models: The model names this dialect documents.
        resolutions: For each model, the resolutions it honours (others are
            ignored by the provider, and the client warns).
        max_image_urls: How many reference images a request may carry (None: no limit).
    """

    name: str
    create_base_url: str
    query_base_url: str
    create_path: str
    query_path: str
    models: frozenset[str]
    resolutions: Mapping[str, frozenset[Resolution]]
    max_image_urls: int | None = None

    def validate(self, request: GenerationRequest, *, allow_unknown_models: bool = False) -> None:
        """Check the dialect's own rules; the request checked its generic ones.

        Raises:
            InvalidRequestError: an unlisted model (unless allowed), or too
                many reference images.

        Warns:
            ResolutionIgnoredWarning: the model ignores the given resolution.
        """
        known = request.model in self.models
        if not known and not allow_unknown_models:
            listed = ", ".join(sorted(self.models))
            raise InvalidRequestError(
                f"model {str(request.model)!r} is not listed by the {self.name!r} dialect "
                f"(known: {listed}); pass allow_unknown_models=True to send it anyway"
            )
        if self.max_image_urls is not None and len(request.image_urls) > self.max_image_urls:
            raise InvalidRequestError(
                f"the {self.name!r} dialect takes at most {self.max_image_urls} reference "
                f"images, got {len(request.image_urls)}"
            )
        if known and request.resolution is not None:
            honoured = self.resolutions.get(request.model, _ALL_RESOLUTIONS)
            if request.resolution not in honoured:
                warnings.warn(
                    f"model {str(request.model)!r} ignores resolution {request.resolution.value!r} "
                    f"on the {self.name!r} dialect",
                    ResolutionIgnoredWarning,
                    stacklevel=3,
                )

    def create_request(
        self, request: GenerationRequest, *, base_url: str | None = None
    ) -> HTTPRequest:
        """The POST that creates a task for ``request``."""
        body = json.dumps(CONVERTER.unstructure(request), ensure_ascii=False).encode()
        return HTTPRequest(
            "POST",
            _join(base_url or self.create_base_url, self.create_path),
            body,
            {"Content-Type": "application/json", "Accept": "application/json"},
        )

    def query_request(self, task_id: str, *, base_url: str | None = None) -> HTTPRequest:
        """The GET that asks for the status of task ``task_id``."""
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequestError(f"task id must be a non-empty string, not {task_id!r}")
        problem = text_problem(task_id)
        if problem is not None:
            raise InvalidRequestError(f"task id {task_id!a} cannot be sent: {problem}")
        path = self.query_path.format(id=_quote_id(task_id))
        return HTTPRequest(
            "GET",
            _join(base_url or self.query_base_url, path),
            None,
            {"Accept": "application/json"},
        )

    def parse_create(self, response: HTTPResponse) -> Task:
        """Read a create response into the new task.

        A missing status is read as ``queued``: the id is what matters, and a
        task the provider created (and billed) must not be lost over it.
        """
        data = parse_body(response)
        return _task(_structure(data, response), default_status=TaskStatus.QUEUED.value)

    def parse_task(self, response: HTTPResponse, *, task_id: str | None = None) -> Task:
        """Read a status-query response into a task.

        A completed task without a usable ``image_url`` is returned as failed
        (``raw_status`` keeps the provider's word): no later poll can mend it.

        Args:
            response: The answer to a status query.
            task_id: The id that was asked for; an answer about another task
                is refused (a proxy or cache mixing answers up).

        Raises:
            ResponseValidationError: not a task, no status, or another task.
        """
        data = parse_body(response)
        wire = _structure(data, response)
        if wire.status is None:
            raise ResponseValidationError(
                "the provider's response has no status",
                body=_text(response.body),
                status_code=response.status,
            )
        if task_id is not None and wire.id != task_id:
            raise ResponseValidationError(
                f"the provider answered a query for task {task_id!a} with task {wire.id!a}",
                body=_text(response.body),
                status_code=response.status,
            )
        return _task(wire)


def _quote_id(task_id: str) -> str:
    """The id as one path segment that no URL normalisation can change.

    ``quote`` leaves ``.`` alone (it is unreserved), but a segment of dots
    only (``.``, ``..``) would be resolved away as "this" or "the parent"
    directory by URL libraries and proxies alike.
    """
    quoted = quote(task_id, safe="")
    return quoted.replace(".", "%2E") if not quoted.strip(".") else quoted


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


_PRO = frozenset(Resolution)
_ONE_K = frozenset({Resolution.R1K})

NANO = Dialect(
    name="nano",
    create_base_url="https://zcbservice.aizfw.cn/kyyReactApiServer",
    query_base_url="https://zcbservice.aizfw.cn/kyyReactApiServer",
    create_path="/v1/banana/images",
    query_path="/v1/result/{id}",
    models=frozenset(
        {
            Model.NANO_BANANA,
            Model.NANO_BANANA_PRO,
            Model.NANO_BANANA_PRO_STABLE,
            Model.NANO_BANANA_2_STABLE,
            Model.NANO_BANANA_2,
        }
    ),
    # 1k is the documented default for the non-pro models; 2k and 4k are for pro.
    resolutions={
        Model.NANO_BANANA: _ONE_K,
        Model.NANO_BANANA_2: _ONE_K,
        Model.NANO_BANANA_2_STABLE: _ONE_K,
        Model.NANO_BANANA_PRO: _PRO,
        Model.NANO_BANANA_PRO_STABLE: _PRO,
    },
    max_image_urls=6,
)
"""The ``nano`` dialect ("Nano Banana")."""

NAVO = Dialect(
    name="navo",
    create_base_url="https://api.globalaiopc.com",
    query_base_url="https://zcbservice.aizfw.cn/kyyAiPower",
    create_path="/v1/image/banana/",  # the trailing slash is as documented
    query_path="/v1/result/{id}",
    models=frozenset({Model.NANO_BANANA_FAST, Model.NANO_BANANA_PRO, Model.NANO_BANANA_2}),
    # resolution is documented as effective only for nano-banana-2 and -pro.
    resolutions={
        Model.NANO_BANANA_FAST: frozenset(),
        Model.NANO_BANANA_2: _PRO,
        Model.NANO_BANANA_PRO: _PRO,
    },
    max_image_urls=None,
)
"""The ``navo`` dialect ("Navo Banana")."""

_BY_NAME = {NANO.name: NANO, NAVO.name: NAVO}


def get_dialect(dialect: str | Dialect) -> Dialect:
    """Look a dialect up by name (case-insensitive), or pass an instance through.

    Raises:
        InvalidRequestError: no dialect of that name.
    """
    if isinstance(dialect, Dialect):
        return dialect
    found = _BY_NAME.get(str(dialect).strip().lower())
    if found is None:
        raise InvalidRequestError(
            f"unknown dialect {dialect!r}; expected one of {', '.join(sorted(_BY_NAME))}"
        )
    return found
