"""A scriptable, in-process fake of the Nano Banana task API.

:class:`FakeBananaServer` is a real HTTP server on the loopback interface that
speaks both dialects side by side under one root URL:

* ``POST /v1/banana/images`` creates a task in the ``nano`` dialect;
* ``POST /v1/image/banana/`` creates a task in the ``navo`` dialect (the
  trailing slash is optional);
* ``GET /v1/result/{id}`` queries a task (shared by both dialects);
* ``GET /images/{id}.png`` downloads the image of a completed task (no API
  key needed, like a separate image host).

Task progress is computed from a clock when a task is queried, so thousands
of concurrent tasks cost one dictionary entry each and no timers. Outcomes are
scripted with :class:`TaskScript`, transport and protocol failures are
injected with :class:`Fault`, a provider's rate limit is set with
:class:`RequestBudget`, and every request is recorded as a
:class:`RecordedRequest`.

Example:
    >>> async def demo() -> None:  # doctest: +SKIP
    ...     async with FakeBananaServer(api_key="k", duration=0.0) as server:
    ...         server.plan(TaskScript(outcome="fail", error="content policy violation"))
    ...         server.inject(Fault.status(429, headers={"Retry-After": "1"}), on="query")
    ...         ...  # point a client at server.url
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import http
import json
import math
import secrets
import time
import types
import zlib
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote, unquote

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from banana_async._png import make_png

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "DialectName",
    "FakeBananaServer",
    "FakeClock",
    "FakeTask",
    "Fault",
    "FaultAction",
    "FaultTarget",
    "RecordedRequest",
    "RequestBudget",
    "RequestKind",
    "TaskOutcome",
    "TaskScript",
]


class FakeClock:
    """A virtual clock for :class:`~banana_async.BananaClient` and this server.

    ``sleep`` advances the time at once instead of waiting, and records how
    long it was asked to sleep, so a test can check poll spacing and retry
    delays without a wall clock. Share it with the server
    (``FakeBananaServer(clock=clock.time)``) so tasks progress on the same
    time line. Exact for one sleeper at a time; with many concurrent
    sleepers each advances the shared time by its own delay.

    Attributes:
        now: The current virtual time in seconds.
        sleeps: Every delay passed to :meth:`sleep`, in order.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        """The virtual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the virtual time by ``seconds`` and let other tasks run."""
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time ({seconds})")
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


#: The two API dialects the fake serves.
DialectName = Literal["nano", "navo"]
#: How a task ends once its duration has elapsed.
TaskOutcome = Literal["complete", "fail"]
#: What a recorded request was, by route.
RequestKind = Literal["create", "query", "image", "other"]
#: Which requests an injected fault applies to.
FaultTarget = Literal["create", "query", "image", "any"]
#: What an injected fault does.
FaultAction = Literal["respond", "reset", "stall", "status_word", "edit"]

_NANO_CREATE_PATHS = frozenset({"/v1/banana/images", "/v1/banana/images/"})
_NAVO_CREATE_PATHS = frozenset({"/v1/image/banana/", "/v1/image/banana"})
_QUERY_PREFIX = "/v1/result/"
_IMAGE_PREFIX = "/images/"
_IMAGE_SUFFIX = ".png"

_NAVO_DISPLAY_NAMES: Mapping[str, str] = types.MappingProxyType(
    {
        "nano-banana-2": "NanoBanana2",
        "nano-banana-pro": "NanoBananaPro",
        "nano-banana-fast": "NanoBananaFast",
    }
)

_ERROR_TYPES: Mapping[int, str] = types.MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found",
        429: "rate_limit_error",
    }
)


def _freeze_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    """Copy a mapping into a read-only view (``None`` becomes empty)."""
    return types.MappingProxyType(dict(value or {}))


def _freeze_any(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Copy a mapping of JSON values into a read-only view (``None`` becomes empty)."""
    return types.MappingProxyType(dict(value or {}))


def _as_bytes(value: bytes | str) -> bytes:
    """Encode text as UTF-8, pass bytes through."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _reason(code: int) -> str:
    """The standard reason phrase of an HTTP status code, or ``"Error"``."""
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """Attrs validator: a number of seconds that is ``None`` or at least zero."""
    if value is not None and value < 0:
        msg = f"{attribute.name} must be >= 0, got {value!r}"
        raise ValueError(msg)


def _positive_count(_instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    """Attrs validator: ``None`` or an integer of at least one."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        msg = f"{attribute.name} must be None or an integer >= 1, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class TaskScript:
    """How one fake task behaves.

    Attributes:
        duration: Seconds (on the server's clock) from creation to the terminal
            state; ``None`` keeps the task processing until
            :meth:`FakeBananaServer.finish` or :meth:`FakeBananaServer.fail`.
        outcome: ``"complete"`` (an image is produced) or ``"fail"``.
        error: The error message a failed task reports.
        status_words: Maps a canonical status (``queued``, ``processing``,
            ``completed``, ``failed``) to the word the server sends instead,
            e.g. ``{"completed": "SUCCEEDED", "processing": "running"}``.
        task_id: The id to give the task instead of a random one (for
            example, one that needs URL quoting). Must be unused.
        queries: When set, the task reaches its terminal state at its Nth
            status query (counted per task; the first query is 1) instead of
            after ``duration``, which is then ignored: ``queries=2`` answers
            ``processing`` once, then ``completed`` (or ``failed``). Handy
            when a test or benchmark must not depend on timing. Queries
            answered by an injected fault that skips processing do not count.
            :meth:`FakeBananaServer.finish` and :meth:`FakeBananaServer.fail`
            still end the task earlier.
    """

    duration: float | None = attrs.field(default=0.0, validator=_non_negative)
    outcome: TaskOutcome = attrs.field(
        default="complete", validator=attrs.validators.in_(("complete", "fail"))
    )
    error: str = "generation failed"
    status_words: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_mapping, hash=False
    )
    task_id: str | None = None
    queries: int | None = attrs.field(default=None, validator=_positive_count)

    def word(self, status: str) -> str:
        """The word sent on the wire for a canonical status.

        Args:
            status: A canonical status such as ``"completed"``.

        Returns:
            The scripted replacement, or ``status`` itself.
        """
        return self.status_words.get(status, status)


@attrs.define
class FakeTask:
    """The server-side state of one task.

    Attributes:
        id: The task id.
        dialect: The dialect it was created with.
        body: The create request's JSON body.
        created_at: Creation time on the server's clock.
        created_unix: Creation time as integer Unix seconds (the ``created`` field).
        script: The script it follows.
        finished_at: Clock time at which it becomes terminal; ``None`` while it
            waits for a manual :meth:`FakeBananaServer.finish` or
            :meth:`FakeBananaServer.fail`, or for the status query that
            :attr:`TaskScript.queries` names.
        outcome: How it ends.
        error: The error message once failed, else ``None``.
        queries: Status queries of this task answered so far.
    """

    id: str
    dialect: DialectName
    body: dict[str, Any]
    created_at: float
    created_unix: int
    script: TaskScript
    finished_at: float | None
    outcome: TaskOutcome
    error: str | None
    queries: int = 0

    @property
    def model(self) -> str:
        """The model named in the create request."""
        return str(self.body.get("model", ""))

    def is_terminal(self, now: float) -> bool:
        """Whether the task has finished (completed or failed) at ``now``.

        Args:
            now: A time on the server's clock.

        Returns:
            ``True`` once ``now`` has reached :attr:`finished_at`.
        """
        return self.finished_at is not None and now >= self.finished_at

    def status(self, now: float) -> str:
        """The canonical status at a given time.

        Args:
            now: A time on the server's clock.

        Returns:
            ``"processing"`` before the task finishes, then ``"completed"`` or
            ``"failed"``.
        """
        if not self.is_terminal(now):
            return "processing"
        return "completed" if self.outcome == "complete" else "failed"

    def wire_status(self, now: float) -> str:
        """The status word the server sends at ``now`` (after ``status_words``).

        Args:
            now: A time on the server's clock.

        Returns:
            The word for :meth:`status`, as scripted.
        """
        return self.script.word(self.status(now))


@attrs.frozen
class RecordedRequest:
    """One request the fake server received.

    Attributes:
        method: The HTTP method.
        path: The raw request path as sent (still URL-quoted, with any query string).
        kind: ``create``, ``query``, ``image`` or ``other`` (unknown route or method).
        dialect: The dialect of a create request, else ``None``.
        headers: A case-insensitive, read-only copy of the request headers.
        body: The raw request body.
        json: The body parsed as JSON, or ``None`` if it is empty or not JSON.
        task_id: The task created (create) or addressed (query, image), decoded.
        at: Arrival time on the server's clock.
        rate_limited: Whether the server's :class:`RequestBudget` refused it
            with ``429`` (it was then not processed, and no fault struck it).
    """

    method: str
    path: str
    kind: RequestKind
    dialect: DialectName | None
    headers: Mapping[str, str] = attrs.field(hash=False)
    body: bytes
    json: Any = attrs.field(hash=False)
    task_id: str | None
    at: float
    rate_limited: bool = False

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header, or ``None`` if none was sent."""
        return self.headers.get("Authorization")


@attrs.frozen
class Fault:
    """A failure to inject into the server's answers; build one with a classmethod.

    Attributes:
        action: What happens: ``respond`` (a canned response), ``reset`` (the
            connection is dropped), ``stall`` (a delay, then the normal answer)
            or ``status_word`` (a normal query answer with another status word).
        status_code: The HTTP status of a canned response.
        payload: The body of a canned response.
        headers: Extra headers of a canned response.
        content_type: The ``Content-Type`` of a canned response.
        process: Whether the request is processed (a create creates its task)
            before the fault strikes. Only meaningful for creates.
        seconds: How long a stall lasts.
        word: The status word of a ``status_word`` fault.
        changes: JSON fields an ``edit`` fault sets in the normal answer.
        remove: JSON fields an ``edit`` fault deletes from the normal answer.
    """

    action: FaultAction
    status_code: int = 200
    payload: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_mapping, hash=False)
    content_type: str = "application/json"
    process: bool = False
    seconds: float = attrs.field(default=0.0, validator=_non_negative)
    word: str | None = None
    changes: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_any, hash=False)
    remove: tuple[str, ...] = ()

    @classmethod
    def status(
        cls,
        code: int,
        *,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        process: bool = False,
    ) -> Self:
        """Answer with an HTTP error (or any status).

        Args:
            code: The HTTP status code, 100-599.
            body: The response body; default a small JSON error object.
            headers: Extra response headers, e.g. ``{"Retry-After": "2"}``.
            content_type: The ``Content-Type`` of ``body``.
            process: On a create, create (and bill) the task first, then answer
                with this error instead of the normal response.

        Returns:
            The fault.

        Raises:
            ValueError: If ``code`` is not a valid HTTP status code.
        """
        if not 100 <= code <= 599:
            msg = f"HTTP status code must be between 100 and 599, got {code}"
            raise ValueError(msg)
        if body is None:
            error = {
                "message": f"injected HTTP {code}",
                "type": _ERROR_TYPES.get(code, "api_error"),
            }
            payload = json.dumps({"error": error}).encode()
        else:
            payload = _as_bytes(body)
        return cls(
            action="respond",
            status_code=code,
            payload=payload,
            headers=headers,
            content_type=content_type,
            process=process,
        )

    @classmethod
    def reset(cls, *, process: bool = False) -> Self:
        """Drop the connection without any HTTP response.

        Note that aiohttp's client transparently retries an idempotent request
        (``GET``) once after a disconnect; inject with ``times=2`` to make a
        reset of a query or an image download visible to such a client.

        Args:
            process: On a create, create (and bill) the task first.

        Returns:
            The fault.
        """
        return cls(action="reset", process=process)

    @classmethod
    def stall(cls, seconds: float, *, process: bool = False) -> Self:
        """Wait (in real time) before answering normally.

        A stall ends early, without processing, when the server closes.

        Args:
            seconds: How long to wait.
            process: Process the request (a create creates its task) before
                waiting rather than after.

        Returns:
            The fault.
        """
        return cls(action="stall", seconds=seconds, process=process)

    @classmethod
    def body(
        cls,
        raw: bytes | str,
        *,
        status: int = 200,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Self:
        """Answer with an arbitrary body, e.g. malformed JSON or a ``code``/``msg`` error.

        Args:
            raw: The response body.
            status: The HTTP status code.
            content_type: The ``Content-Type`` of ``raw``.
            headers: Extra response headers.

        Returns:
            The fault.
        """
        return cls.status(status, body=raw, headers=headers, content_type=content_type)

    @classmethod
    def html(cls, status: int = 502) -> Self:
        """Answer with a reverse proxy's HTML error page.

        Args:
            status: The HTTP status code.

        Returns:
            The fault.
        """
        title = html.escape(f"{status} {_reason(status)}")
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return cls.status(status, body=page, content_type="text/html; charset=utf-8")

    @classmethod
    def status_word(cls, word: str) -> Self:
        """Answer a query normally, but with this status word (queries only).

        Args:
            word: The status word to send, e.g. ``"in_queue"`` or ``"weird"``.

        Returns:
            The fault.
        """
        return cls(action="status_word", word=word)

    @classmethod
    def edit(
        cls, changes: Mapping[str, Any] | None = None, *, remove: Collection[str] = ()
    ) -> Self:
        """Answer normally (a create creates its task), then change the JSON answer.

        The way to meet a provider that answers with odd fields around a real
        task: ``Fault.edit({"created": "yesterday"})``, a ``code``/``msg``
        pair instead of a status (``Fault.edit({"code": 0, "msg": "task
        submitted"}, remove=["status"])``), a query answer naming another
        task (``Fault.edit({"id": "someone-else"})``) or an unusable
        ``image_url``. Error answers (401, 404, ...) are sent unchanged.

        Args:
            changes: Fields to set (any JSON values) in the answer's object.
            remove: Fields to delete from it.

        Returns:
            The fault.
        """
        return cls(action="edit", changes=changes, remove=tuple(remove))

    @classmethod
    def gzip_bomb(
        cls,
        expanded_bytes: int = 200 * 1024 * 1024,
        *,
        status: int = 200,
        content_type: str = "application/json",
    ) -> Self:
        """Answer with a small gzip body that expands to ``expanded_bytes`` of zeros.

        A 200 MiB expansion takes about 200 KB on the wire. A client that caps
        the size of what it reads must count the decoded bytes, not the
        transferred ones.

        Args:
            expanded_bytes: The size once decompressed.
            status: The HTTP status code.
            content_type: The ``Content-Type`` it claims; ``"image/png"`` to
                try an image download's size cap (a JSON type is refused as
                not an image before anything is inflated).

        Returns:
            The fault.

        Raises:
            ValueError: If ``expanded_bytes`` is negative.
        """
        if expanded_bytes < 0:
            msg = f"expanded_bytes must be >= 0, got {expanded_bytes}"
            raise ValueError(msg)
        return cls.status(
            status,
            body=_gzip_zeros(expanded_bytes),
            headers={"Content-Encoding": "gzip"},
            content_type=content_type,
        )


def _finite(value: object) -> bool:
    """Whether ``value`` is a finite int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_rate(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Attrs validator: a finite number of tokens per second above zero."""
    if not (_finite(value) and value > 0):
        msg = f"{attribute.name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)


def _bucket_size(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """Attrs validator: ``None`` or a finite number of tokens of at least one."""
    # Below one token no request could ever pass.
    if value is not None and not (_finite(value) and value >= 1):
        msg = f"{attribute.name} must be None or a finite number >= 1, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class RequestBudget:
    """A provider's rate limit for :class:`FakeBananaServer`: a token bucket per API key.

    Each distinct ``Authorization`` header value has a bucket of its own
    (requests without the header share one). A bucket starts full, holds at
    most :attr:`capacity` tokens and refills at ``rate`` tokens per second
    of the server's clock. Every create and status query takes one token; a
    request that finds less than one is answered ``429`` and is not processed
    (a create creates no task). Image downloads, like a separate image host,
    are never limited.

    The budget is checked before injected faults: a request it refuses
    consumes no :class:`Fault`, and a request it lets through has paid its
    token whatever a fault then does to it.

    Attributes:
        rate: Tokens added per second (the sustained requests per second).
        burst: The most tokens a bucket holds (requests that can arrive at
            once after a quiet spell); ``None`` means ``max(1, rate)``.
        retry_after: Whether a ``429`` carries a ``Retry-After`` header with
            the whole seconds until a token is available (at least 1, as real
            servers send it). Without it the client must guess.
    """

    rate: float = attrs.field(validator=_positive_rate)
    burst: float | None = attrs.field(default=None, validator=_bucket_size)
    retry_after: bool = True

    @property
    def capacity(self) -> float:
        """The most tokens a bucket holds (``burst``, or ``max(1, rate)`` when unset)."""
        return max(1.0, self.rate) if self.burst is None else float(self.burst)


_LIMITED_KINDS = frozenset({"create", "query"})
"""The requests a :class:`RequestBudget` limits: the API's, not image downloads."""

# Float arithmetic may leave an exactly refilled token at 0.99999...: a
# request on time must not be refused for that.
_TOKEN_SLACK = 1e-9


@attrs.define
class _Bucket:
    """One key's tokens, as of ``stamp`` on the server's clock."""

    tokens: float
    stamp: float

    def refill(self, now: float, budget: RequestBudget) -> None:
        """Add what ``budget`` earned since ``stamp``, up to its capacity."""
        if now > self.stamp:
            self.tokens = min(budget.capacity, self.tokens + (now - self.stamp) * budget.rate)
            self.stamp = now


@attrs.define
class _PendingFault:
    """A fault waiting in the queue, with its remaining count."""

    fault: Fault
    on: FaultTarget
    remaining: int


@attrs.frozen
class _Route:
    """What a request addresses."""

    kind: RequestKind
    dialect: DialectName | None = None
    task_id: str | None = None
    allowed: str | None = None  # set when the path is known but the method is not


def _gzip_zeros(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes, built without holding them in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts: list[bytes] = []
    left = size
    while left > 0:
        parts.append(packer.compress(block[: min(left, len(block))]))
        left -= len(block)
    parts.append(packer.flush())
    return b"".join(parts)


def _edited(response: web.Response, fault: Fault) -> web.Response:
    """The JSON ``response`` with the fields of an ``edit`` fault changed."""
    if response.status >= 400 or not isinstance(response.body, bytes):
        return response
    data = json.loads(response.body)
    for name in fault.remove:
        data.pop(name, None)
    data.update(fault.changes)
    return web.json_response(data, status=response.status)


def _error(status: int, message: str, error_type: str) -> web.Response:
    """A JSON error response in the fake's house style."""
    return web.json_response({"error": {"message": message, "type": error_type}}, status=status)


def _validate_create(body: Any) -> str | None:
    """Check a create body; return the problem, or ``None`` if it is acceptable."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt must be a non-empty string"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model must be a non-empty string"
    for name in ("resolution", "size"):
        if body.get(name) is not None and not isinstance(body[name], str):
            return f"{name} must be a string"
    urls = body.get("image_urls")
    if urls is not None and (
        not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
    ):
        return "image_urls must be a list of strings"
    return None


def _parse_json(raw: bytes) -> Any:
    """Parse a body as JSON; ``None`` if empty or invalid."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _colour(task_id: str) -> tuple[int, int, int]:
    """A deterministic colour for a task id."""
    digest = hashlib.sha256(task_id.encode()).digest()
    return digest[0], digest[1], digest[2]


class FakeBananaServer:
    """An in-process fake of the Nano Banana API serving both dialects.

    Use it as an async context manager (or call :meth:`start` and
    :meth:`close`) and point clients at :attr:`url`. Pass ``budget=`` (a
    :class:`RequestBudget`) to rate-limit API requests per key, as a real
    provider does; :attr:`budget` changes it while the server runs.

    Attributes:
        api_key: The key every API request must present as
            ``Authorization: Bearer <key>``; ``None`` accepts any request.
        duration: Default seconds from creation to the terminal state for tasks
            without a script; ``None`` means they never finish on their own.
        image_size: ``(width, height)`` of served images.
        script_for: Optional hook given each create body that returns the
            task's :class:`TaskScript` (or ``None`` for the default). Scripts
            queued with :meth:`plan` take precedence.
        requests: Every request received, in arrival order.
        tasks: Every task created, by id.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        duration: float | None = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
        image_size: tuple[int, int] = (64, 64),
        budget: RequestBudget | None = None,
    ) -> None:
        self.api_key = api_key
        self.duration = duration
        self.image_size = image_size
        self.script_for: Callable[[dict[str, Any]], TaskScript | None] | None = None
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, FakeTask] = {}
        self._host = host
        self._port = port
        self._clock = clock
        self._plans: deque[TaskScript] = deque()
        self._faults: list[_PendingFault] = []
        self._budget: RequestBudget | None = None
        # Authorization header value (None: no header) -> its tokens.
        self._buckets: dict[str | None, _Bucket] = {}
        self.budget = budget
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._closing = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: If the server was already started.
        """
        if self._runner is not None:
            msg = "FakeBananaServer is already started"
            raise RuntimeError(msg)
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._port = int(port)
        shown = f"[{host}]" if ":" in str(host) else str(host)
        self._url = f"http://{shown}:{self._port}"

    async def close(self) -> None:
        """Stop listening and close all connections (idempotent).

        Requests stalled by :meth:`Fault.stall` are aborted.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The root URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash).

        Raises:
            RuntimeError: If the server has not been started.
        """
        if self._url is None:
            msg = "FakeBananaServer is not started"
            raise RuntimeError(msg)
        return self._url

    @property
    def port(self) -> int:
        """The port listened on (the one assigned, once started with port 0)."""
        return self._port

    def now(self) -> float:
        """The current time on the server's clock (the running loop's by default)."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    # -- scripting -----------------------------------------------------------

    def plan(self, *scripts: TaskScript) -> None:
        """Queue scripts for the next tasks created, in order.

        Args:
            *scripts: One script per upcoming create.
        """
        self._plans.extend(scripts)

    def inject(self, fault: Fault, *, on: FaultTarget, times: int = 1) -> None:
        """Queue a fault for the next matching requests.

        Faults are consumed first in, first out by requests of the matching
        kind (``any`` matches creates, queries and image downloads).

        Args:
            fault: What goes wrong.
            on: Which requests it strikes.
            times: How many matching requests it strikes.

        Raises:
            ValueError: If ``times`` is less than 1, ``on`` is unknown, or a
                status-word fault targets something other than queries.
        """
        if on not in ("create", "query", "image", "any"):
            msg = f"unknown fault target {on!r}"
            raise ValueError(msg)
        if times < 1:
            msg = f"times must be >= 1, got {times}"
            raise ValueError(msg)
        if fault.action == "status_word" and on != "query":
            msg = "a status-word fault only applies to queries (on='query')"
            raise ValueError(msg)
        if fault.action == "edit" and on not in ("create", "query"):
            msg = "an edit fault only applies to JSON answers (on='create' or on='query')"
            raise ValueError(msg)
        self._faults.append(_PendingFault(fault=fault, on=on, remaining=times))

    @property
    def pending_faults(self) -> int:
        """How many fault strikes are still queued."""
        return sum(p.remaining for p in self._faults)

    def finish(self, task_id: str) -> None:
        """Complete a task now.

        Args:
            task_id: The task.

        Raises:
            KeyError: If there is no such task.
            ValueError: If the task is already terminal.
        """
        self._terminate(task_id, "complete", None)

    def fail(self, task_id: str, message: str | None = None) -> None:
        """Fail a task now.

        Args:
            task_id: The task.
            message: The error it reports; default its script's ``error``.

        Raises:
            KeyError: If there is no such task.
            ValueError: If the task is already terminal.
        """
        task = self.tasks[task_id]
        self._terminate(task_id, "fail", task.script.error if message is None else message)

    def _terminate(self, task_id: str, outcome: TaskOutcome, error: str | None) -> None:
        task = self.tasks[task_id]
        now = self.now()
        if task.is_terminal(now):
            msg = f"task {task_id!r} is already {task.status(now)}"
            raise ValueError(msg)
        task.outcome = outcome
        task.error = error
        task.finished_at = now

    @property
    def budget(self) -> RequestBudget | None:
        """The per-key request budget, or ``None`` for no limit.

        Set it while the server runs to raise or lower the provider's limit
        mid-test. Each key keeps the tokens it has (earned at the old rate up
        to now), capped at the new budget's capacity, and refills at the new
        rate from now on. Setting ``None`` lifts the limit and forgets every
        bucket: a budget set after that starts every key with a full bucket.

        Raises:
            TypeError: If set to something other than a budget or ``None``.
        """
        return self._budget

    @budget.setter
    def budget(self, value: RequestBudget | None) -> None:
        if value is not None and not isinstance(value, RequestBudget):
            # Untyped callers exist: fail here, not at the next request.
            raise TypeError(f"budget must be a RequestBudget or None, not {type(value).__name__}")
        old, self._budget = self._budget, value
        if value is None:
            self._buckets.clear()
            return
        if old is None or not self._buckets:  # no bucket exists without a budget
            return
        now = self.now()
        capacity = value.capacity
        for bucket in self._buckets.values():
            bucket.refill(now, old)
            bucket.tokens = min(bucket.tokens, capacity)

    def count(self, kind: RequestKind | None = None) -> int:
        """Count recorded requests.

        Args:
            kind: Only requests of this kind; all when ``None``.

        Returns:
            The number of matching requests.
        """
        if kind is None:
            return len(self.requests)
        return sum(1 for r in self.requests if r.kind == kind)

    def count_rate_limited(self, kind: RequestKind | None = None) -> int:
        """Count recorded requests that the :attr:`budget` answered with ``429``.

        Args:
            kind: Only requests of this kind (``create`` or ``query``); all
                when ``None``.

        Returns:
            The number of matching requests.
        """
        return sum(1 for r in self.requests if r.rate_limited and (kind is None or r.kind == kind))

    def image_url(self, task_id: str) -> str:
        """The URL a completed task's image is served at.

        Args:
            task_id: The task.

        Returns:
            ``{url}/images/{quoted id}.png``.
        """
        return f"{self.url}{_IMAGE_PREFIX}{quote(task_id, safe='')}{_IMAGE_SUFFIX}"

    # -- request handling ------------------------------------------------------

    def _take_fault(self, kind: RequestKind) -> Fault | None:
        if kind == "other":
            return None
        for index, pending in enumerate(self._faults):
            if pending.on in (kind, "any"):
                pending.remaining -= 1
                if pending.remaining <= 0:
                    del self._faults[index]
                return pending.fault
        return None

    def _spend(self, request: web.Request, kind: RequestKind) -> web.Response | None:
        """Take a token for an API request; the ``429`` answer when there is none.

        Runs on every request, so it costs a dictionary lookup and a few float
        operations: the benchmarks send thousands of requests through it.
        """
        budget = self._budget
        if budget is None or kind not in _LIMITED_KINDS:
            return None
        now = self.now()
        key = request.headers.get("Authorization")
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(budget.capacity, now)
        else:
            bucket.refill(now, budget)
        if bucket.tokens >= 1.0 - _TOKEN_SLACK:
            bucket.tokens -= 1.0
            return None
        response = _error(429, "too many requests: rate limit exceeded", _ERROR_TYPES[429])
        if budget.retry_after:
            wait = (1.0 - bucket.tokens) / budget.rate
            # Whole seconds, rounded up so that a client obeying it finds the
            # token there; never 0, which some clients read as "no wait".
            response.headers["Retry-After"] = str(max(1, math.ceil(wait - _TOKEN_SLACK)))
        return response

    @staticmethod
    def _route(request: web.Request) -> _Route:
        path = request.raw_path.partition("?")[0]
        if path in _NANO_CREATE_PATHS or path in _NAVO_CREATE_PATHS:
            dialect: DialectName = "nano" if path in _NANO_CREATE_PATHS else "navo"
            route = _Route("create", dialect=dialect)
        elif path.startswith(_QUERY_PREFIX):
            route = _Route("query", task_id=unquote(path.removeprefix(_QUERY_PREFIX)))
        elif path.startswith(_IMAGE_PREFIX) and path.endswith(_IMAGE_SUFFIX):
            quoted = path.removeprefix(_IMAGE_PREFIX).removesuffix(_IMAGE_SUFFIX)
            route = _Route("image", task_id=unquote(quoted))
        else:
            return _Route("other")
        allowed = ("POST",) if route.kind == "create" else ("GET", "HEAD")
        if request.method not in allowed:
            return _Route("other", allowed=", ".join(allowed))
        return route

    def _set_task_id(self, record: RecordedRequest, task_id: str) -> None:
        """Replace a recorded create with a copy naming the task it created."""
        for index in range(len(self.requests) - 1, -1, -1):
            if self.requests[index] is record:
                self.requests[index] = attrs.evolve(record, task_id=task_id)
                return

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = self.now()
        raw = await request.read()
        route = self._route(request)
        refusal = self._spend(request, route.kind)
        record = RecordedRequest(
            method=request.method,
            path=request.raw_path,
            kind=route.kind,
            dialect=route.dialect,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=raw,
            json=_parse_json(raw),
            task_id=route.task_id,
            at=at,
            rate_limited=refusal is not None,
        )
        self.requests.append(record)
        if refusal is not None:  # before faults: a refused request consumes none
            return refusal
        fault = self._take_fault(route.kind)
        if fault is None:
            return self._answer(request, route, record)
        return await self._answer_with_fault(request, route, record, fault)

    async def _answer_with_fault(
        self, request: web.Request, route: _Route, record: RecordedRequest, fault: Fault
    ) -> web.StreamResponse:
        if fault.action in ("status_word", "edit"):
            answer = self._answer(request, route, record, word=fault.word)
            return _edited(answer, fault) if fault.action == "edit" else answer
        if fault.action == "stall" and not fault.process:
            if await self._stall(fault.seconds):
                return self._answer(request, route, record)
            return self._drop(request)
        response = self._answer(request, route, record) if fault.process else None
        if fault.action == "stall":
            await self._stall(fault.seconds)
            assert response is not None
            return response
        if fault.action == "reset":
            return self._drop(request)
        return self._canned(fault)

    async def _stall(self, seconds: float) -> bool:
        """Wait ``seconds``; return ``False`` if the server closed meanwhile."""
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except TimeoutError:
            return True
        return False

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection; aiohttp then fails to send the returned response."""
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=204)

    @staticmethod
    def _canned(fault: Fault) -> web.Response:
        headers = CIMultiDict(fault.headers)
        no_body = fault.status_code < 200 or fault.status_code in (204, 304)
        if not no_body and "Content-Type" not in headers:
            headers["Content-Type"] = fault.content_type
        return web.Response(
            status=fault.status_code,
            reason=_reason(fault.status_code),
            body=None if no_body else fault.payload,
            headers=headers,
        )

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == (
            f"Bearer {self.api_key}"
        )

    def _answer(
        self,
        request: web.Request,
        route: _Route,
        record: RecordedRequest,
        *,
        word: str | None = None,
    ) -> web.Response:
        """The normal answer to a request (synchronous: no awaiting in here)."""
        if route.kind == "create":
            return self._answer_create(request, route, record)
        if route.kind == "query":
            return self._answer_query(request, route, word)
        if route.kind == "image":
            return self._answer_image(route)
        if route.allowed is not None:
            response = _error(405, f"method {request.method} not allowed", "invalid_request_error")
            response.headers["Allow"] = route.allowed
            return response
        return _error(404, "not found", "not_found")

    def _answer_create(
        self, request: web.Request, route: _Route, record: RecordedRequest
    ) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid api key", "authentication_error")
        body = record.json
        problem = _validate_create(body)
        if problem is not None:
            return _error(400, problem, "invalid_request_error")
        assert isinstance(body, dict)  # checked by _validate_create
        assert route.dialect is not None
        body = dict(body)
        script = self._plans.popleft() if self._plans else None
        if script is None and self.script_for is not None:
            script = self.script_for(body)
        if script is None:
            script = TaskScript(duration=self.duration)
        task_id = script.task_id if script.task_id is not None else self._new_id()
        if task_id in self.tasks:
            return _error(409, f"task id {task_id!r} already exists", "invalid_request_error")
        now = self.now()
        task = FakeTask(
            id=task_id,
            dialect=route.dialect,
            body=body,
            created_at=now,
            created_unix=int(time.time()),
            script=script,
            finished_at=(
                None
                if script.duration is None or script.queries is not None
                else now + script.duration
            ),
            outcome=script.outcome,
            error=script.error if script.outcome == "fail" else None,
        )
        self.tasks[task_id] = task
        self._set_task_id(record, task_id)
        navo = route.dialect == "navo"
        return web.json_response(
            {
                "id": task.id,
                "object": "navobanana" if navo else "image",
                "created": task.created_unix,
                "model": "navobanana" if navo else task.model,
                "status": script.word("queued"),
            }
        )

    def _answer_query(self, request: web.Request, route: _Route, word: str | None) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid api key", "authentication_error")
        task = self.tasks.get(route.task_id or "")
        if task is None:
            return _error(404, "task not found", "not_found")
        now = self.now()
        task.queries += 1
        scripted = task.script.queries
        if scripted is not None and task.finished_at is None and task.queries >= scripted:
            task.finished_at = now
        status = task.status(now)
        model = task.model
        if task.dialect == "navo":
            model = _NAVO_DISPLAY_NAMES.get(model, model)
        return web.json_response(
            {
                "id": task.id,
                "object": "image.generation",
                "created": task.created_unix,
                "model": model,
                "status": task.script.word(status) if word is None else word,
                "image_url": self.image_url(task.id) if status == "completed" else None,
                "error": task.error if status == "failed" else None,
            }
        )

    def _answer_image(self, route: _Route) -> web.Response:
        task = self.tasks.get(route.task_id or "")
        if task is None or task.status(self.now()) != "completed":
            return _error(404, "image not found", "not_found")
        width, height = self.image_size
        png = make_png(width, height, _colour(task.id))
        return web.Response(body=png, content_type="image/png")

    def _new_id(self) -> str:
        while True:
            task_id = secrets.token_hex(6)
            if task_id not in self.tasks:
                return task_id
