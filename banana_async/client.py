"""``BananaClient``: the session manager that creates, queries and waits on tasks.

Layers, each hop once: the client decides *when* (retries, polls, deadlines),
:mod:`banana_async.dialects` decides *what* (request bytes in, task or error
out), and :mod:`banana_async._transport` is the only code that touches aiohttp.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import os
import random
import traceback
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import attrs
from multidict import CIMultiDict

from banana_async import _batch, _retry, _transport
from banana_async._checks import count_problem, split_http_url
from banana_async._polling import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_WAIT_TIMEOUT,
    Clock,
    DurationKey,
    PollPolicy,
    Scout,
    SystemClock,
    check_interval,
    check_timeout,
    wake_delay,
)
from banana_async._redact import Redactor
from banana_async._version import __version__
from banana_async.dialects import Dialect, HTTPRequest, HTTPResponse, get_dialect
from banana_async.download import DEFAULT_MAX_IMAGE_BYTES, download_task_image
from banana_async.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BananaError,
    InvalidRequestError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
)
from banana_async.journal import Journal, JournalStore
from banana_async.models import (
    AspectRatio,
    BatchInput,
    GenerationRequest,
    OnStatus,
    Outcome,
    Resolution,
    Task,
    TaskEvent,
    TaskStatus,
    request_from,
)
from banana_async.ratelimit import DEFAULT_PAUSE, AdaptiveRateLimiter, RateLimiter, RequestKind

if TYPE_CHECKING:
    # Only the type of the session a caller may hand over: every aiohttp
    # call is in _transport.
    import aiohttp

# Clock and SystemClock are public here too: the types of ``clock=``.
__all__ = ["API_KEY_ENV", "RATE_LIMIT_URL_ENV", "BananaClient", "Clock", "SystemClock"]

logger = logging.getLogger("banana_async")

API_KEY_ENV = "BANANA_API_KEY"
RATE_LIMIT_URL_ENV = "BANANA_RATE_LIMIT_URL"
"""Where ``rate_limit_url`` comes from when it is not given (and no ``rate_limiter`` is)."""
"""The environment variable the API key is read from when none is passed."""

DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_CONNECTION_LIMIT = 100

RATE_LIMIT_PAUSE = DEFAULT_PAUSE
"""Seconds the whole client pauses after a 429 that does not say how long, before a
rate is learned (then about one request's worth: see :mod:`banana_async.ratelimit`)."""

_REMEMBERED_TASKS = 100_000
"""Tasks whose creation time and model the client keeps for poll timing."""


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    # ::ffff:127.0.0.1 is 127.0.0.1; Python says so itself only from 3.13 on.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


_MAY_BE_BILLED: Final = (
    "; the provider may have created (and billed) the task anyway: it was not sent "
    "again, check before creating it once more"
)
"""Ends the message of a create that failed after it was sent (a 5xx, a reset, a timeout)."""


def _check_base_url(url: str, what: str) -> str:
    """Refuse URLs that would carry the API key in clear text off this machine."""
    if not isinstance(url, str):  # urlsplit would fail on it with an AttributeError
        raise InvalidRequestError(f"{what} must be an http(s) URL, not {url!r}")
    parts = split_http_url(url)
    if isinstance(parts, str) or not parts.hostname:
        raise InvalidRequestError(f"{what} must be an http(s) URL, not {url!r}")
    if "@" in parts.netloc:
        # aiohttp would turn a user name into a second Authorization header
        # (and raise a bare ValueError); and "http://api.example.com\@127.0.0.1"
        # names one host to some URL parsers and another to others.
        raise InvalidRequestError(
            f"{what} carries a user name or password (the part before '@', not shown "
            "here); the API key is the only credential sent: remove it"
        )
    if parts.scheme.lower() == "http" and not _is_loopback(parts.hostname):
        raise InvalidRequestError(
            f"{what} {url!r} is plain HTTP to a non-loopback host; the API key is only "
            "sent over TLS (use https://)"
        )
    return url


class _Secret:
    """Holds the API key so that no repr, log line or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"


class _Credentials(CIMultiDict[str]):
    """Request headers with the API key, whose repr never shows it.

    They are a local variable of the frames that send a request, and error
    trackers print the locals of a traceback's frames.
    """

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name!r}: {'***' if name.lower() == 'authorization' else value!r}"
            for name, value in self.items()
        )
        return f"<_Credentials({shown})>"


class BananaClient:
    """An async client for one dialect of the Nano Banana task API.

    Use it as an async context manager, once per application (for example in
    a FastAPI lifespan or an aiohttp ``cleanup_ctx``)::

        async with BananaClient(dialect="nano") as client:
            task = await client.generate("a cat on a windowsill", size="16:9")
            print(task.image_url)

    Args:
        api_key: The provider key; defaults to ``$BANANA_API_KEY``. It is sent
            only to the configured API hosts, over TLS unless they are loopback,
            and never appears in reprs, logs or exception messages.
        dialect: ``"nano"``, ``"navo"`` or a :class:`~banana_async.dialects.Dialect`.
        base_url: One base URL for creates and queries (a proxy, or
            :class:`~banana_async.testing.FakeBananaServer`); the dialect's
            paths are appended.
        create_base_url: Base URL for creates only (overrides ``base_url``).
        query_base_url: Base URL for status queries only (overrides ``base_url``).
        session: An :class:`aiohttp.ClientSession` to share. The client never
            closes a session it did not open.
        timeout: Seconds one HTTP request may take, end to end.
        connect_timeout: Seconds to get a connection (including waiting for a
            free one in the pool). A create that fails here was never sent and
            is retried safely.
        max_retries: Retries after the first attempt of one request. Queries
            retry on connection errors, timeouts, 408, 429 and 5xx; creates only
            where the provider cannot have processed them.
        poll_interval: Minimum seconds between status queries of one task.
        wait_timeout: Default deadline of :meth:`wait` and :meth:`generate`;
            None waits forever.
        connection_limit: Maximum simultaneous connections of an owned session.
        allow_unknown_models: Send model names the dialect does not list
            (a provider added one) instead of raising.
        requests_per_second: A hard cap on the client's requests per second
            (creates and status queries together); off by default. With or
            without it, the client learns the provider's limit from its 429s
            and sends just under it.
        rate_limiter: The request budget to use instead of the client's own
            :class:`~banana_async.ratelimit.AdaptiveRateLimiter` (give that
            one its ``requests_per_second``); one limiter may serve several
            clients of one API key in one event loop.
        rate_limit_url: A Redis URL (``redis://host:6379/0``): every client,
            in any process on any machine, that names the same Redis and the
            same API key shares one request budget, one 429 pause and one
            learned limit (see :mod:`banana_async.ratelimit.redis`; needs
            ``pip install 'banana-async[redis]'``). Defaults to
            ``$BANANA_RATE_LIMIT_URL``; ``""`` turns it off. If Redis goes
            away, the client goes on with its own limiter; if it cannot be
            reached as the client opens, opening raises
            :exc:`~banana_async.SharedBudgetError`.
        allow_unshared: With ``rate_limit_url``: if Redis cannot be reached
            as the client opens, go on with the client's own limiter (one
            WARNING, and Redis is tried again every few seconds) instead of
            raising.
        adaptive_polling: Learn how long tasks take (per model and
            resolution) and aim the first poll of a new task near its expected
            completion. When False, every poll comes ``poll_interval`` (plus
            jitter) after the previous one, starting at the create.
        clock: Where time is read and sleeping happens; tests inject a fake one.
        on_status: Called with a :class:`~banana_async.TaskEvent` when any
            task of this client is created (by :meth:`create`,
            :meth:`generate` or :meth:`generate_many`) and whenever a wait
            sees a task's status change. A plain function or an async one
            (awaited before the client goes on); what it raises is logged
            and ignored. See :meth:`wait`.

    Whatever the limit, a 429 pauses every request of the client for as long
    as the provider asks (``Retry-After``, capped), not just the one that saw it.
    While the budget binds, creates are sent before status queries.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        dialect: str | Dialect = "nano",
        base_url: str | None = None,
        create_base_url: str | None = None,
        query_base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_retries: int = _retry.DEFAULT_MAX_RETRIES,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        wait_timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        allow_unknown_models: bool = False,
        requests_per_second: float | None = None,
        adaptive_polling: bool = True,
        clock: Clock | None = None,
        rate_limiter: RateLimiter | None = None,
        on_status: OnStatus | None = None,
        rate_limit_url: str | None = None,
        allow_unshared: bool = False,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if isinstance(key, str) and not key.strip():
            key = None
        if key is None:
            raise InvalidRequestError(
                f"no API key: pass api_key=... or set the {API_KEY_ENV} environment variable"
            )
        self._secret = _Secret(_check_key(key))
        self._auth_headers = {"Authorization": f"Bearer {self._secret.reveal()}"}
        # Request headers merged with the credentials, per distinct header set.
        self._merged_headers: dict[tuple[tuple[str, str], ...], _Credentials] = {}
        self._redactor = Redactor(self._secret.reveal())
        # Status words, models and object types seen, and whether each echoes the key.
        self._words: dict[str, bool] = {}

        self._dialect = get_dialect(dialect)
        # An error names the argument the URL came from, as the caller wrote it.
        self._create_base = _check_base_url(
            create_base_url or base_url or self._dialect.create_base_url,
            "create_base_url" if create_base_url else "base_url",
        )
        self._query_base = _check_base_url(
            query_base_url or base_url or self._dialect.query_base_url,
            "query_base_url" if query_base_url else "base_url",
        )

        problem = count_problem(max_retries, "max_retries", minimum=0) or count_problem(
            connection_limit, "connection_limit"
        )
        if problem is not None:
            raise InvalidRequestError(problem)
        self._max_retries = max_retries
        self._poll_interval = check_interval(poll_interval)
        self._wait_timeout = check_timeout(wait_timeout, "wait_timeout")
        self._timeout = _transport.make_timeout(
            total=check_timeout(timeout, "timeout"),
            connect=check_timeout(connect_timeout, "connect_timeout"),
        )
        self._download_timeout = _transport.image_timeout(self._timeout)
        self._connection_limit = connection_limit
        self._allow_unknown_models = allow_unknown_models
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = random.Random()
        self._policy = PollPolicy(rng=self._rng)
        self._adaptive = adaptive_polling
        # task id -> (model, resolution), creation time: lets wait() time its
        # first poll for tasks this client created.
        self._created: dict[str, tuple[DurationKey, float]] = {}
        if rate_limit_url is None and rate_limiter is None:
            rate_limit_url = os.environ.get(RATE_LIMIT_URL_ENV)
        self._limiter = _make_limiter(
            requests_per_second,
            rate_limiter,
            self._clock,
            rate_limit_url or None,
            key,
            allow_unshared=allow_unshared,
        )
        # A limiter the client built (a Redis one holds connections) is closed with it.
        self._owns_limiter = rate_limiter is None
        self._on_status = _check_on_status(on_status)
        # Requests in flight at once, sized to the session's connection pool
        # (set on entry): a request waits here, untimed, rather than in the
        # pool, where the wait would count against connect_timeout and fail
        # hundreds of creates that were never sent.
        self._slots: asyncio.Semaphore | None = None
        # Images come from other hosts, and a slow one must not hold the API
        # connections every poll needs: an owned client downloads through a
        # session of its own, opened at the first download.
        self._image_session: aiohttp.ClientSession | None = None

        self._session: aiohttp.ClientSession | None = session
        self._owns_session = session is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entered = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("this BananaClient is closed; create a new one")
        if self._entered:
            raise RuntimeError("this BananaClient is already open")
        self._loop = asyncio.get_running_loop()
        opener = getattr(self._limiter, "aopen", None)
        if self._owns_limiter and opener is not None:
            # A shared budget that cannot be reached is an error before any
            # request (SharedBudgetError), unless allow_unshared.
            await opener()
        if self._session is None:
            self._session = _transport.make_session(
                connection_limit=self._connection_limit,
                user_agent=f"banana-async/{__version__}",
            )
        slots = _transport.pool_size(self._session)
        self._slots = None if slots is None else asyncio.Semaphore(slots)
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client; closes the HTTP session only if the client opened it."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        images, self._image_session = self._image_session, None
        if images is not None:
            await images.close()
        if session is not None and self._owns_session:
            await session.close()
        closer = getattr(self._limiter, "aclose", None)
        if self._owns_limiter and closer is not None:
            await closer()

    @property
    def closed(self) -> bool:
        """True once the client was closed (it cannot be opened again)."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._entered else "not opened"
        return (
            f"<BananaClient dialect={self._dialect.name!r} create={self._create_base!r} "
            f"query={self._query_base!r} {state}>"
        )

    @property
    def dialect(self) -> Dialect:
        """The dialect this client speaks."""
        return self._dialect

    @property
    def create_base_url(self) -> str:
        """The base URL creates are sent to (the dialect's path is appended)."""
        return self._create_base

    @property
    def rate_limiter(self) -> RateLimiter:
        """The request budget every API request asks first.

        The client's own :class:`~banana_async.ratelimit.AdaptiveRateLimiter`
        unless one was given; its ``rate`` and ``provider_limit`` say what it
        has learned.
        """
        return self._limiter

    @property
    def query_base_url(self) -> str:
        """The base URL status queries are sent to (the dialect's path is appended)."""
        return self._query_base

    def _session_for_call(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this BananaClient is closed")
        if not self._entered or self._session is None:
            raise RuntimeError(
                "BananaClient is not open: use `async with BananaClient(...) as client:`"
            )
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError(
                "this BananaClient is bound to the event loop it was opened in and cannot "
                "be used from another one; open one client per event loop"
            )
        if self._session.closed:
            raise RuntimeError("the aiohttp session given to BananaClient is closed")
        return self._session

    # -- one request ---------------------------------------------------------------

    async def _request(
        self,
        request: HTTPRequest,
        parse: Callable[[HTTPResponse], Task],
        *,
        deadline: float | None = None,
        on_send: Callable[[], Awaitable[None]] | None = None,
    ) -> Task:
        """Send once and parse the answer; a 429 also pauses the whole client.

        Nothing is sent once ``deadline`` (on the client's clock) has passed:
        the request fails with :class:`~banana_async.APITimeoutError`
        (``request_sent=False``) instead. Every error is redacted here.
        ``on_send`` is awaited when the request has its turn and a connection,
        right before it goes on the wire (a journal records the create then).
        """
        response: HTTPResponse | None = None
        try:
            session = self._session_for_call()
            kind: RequestKind = "create" if request.method == "POST" else "query"
            if deadline is None:  # the common case, without a coroutine in between
                turn = await self._limiter.acquire(kind)
                if turn is None:  # only a limiter breaking its protocol gets here
                    raise _not_sent(request, "the rate limiter gave it no turn")
            else:
                turn = await self._wait_for_turn(request, kind, deadline)
            headers = self._headers_for(request)
            await self._take_slot(request, deadline)
            try:
                if on_send is not None:
                    await on_send()
                response = await _transport.send(
                    session, request, headers=headers, timeout=self._timeout
                )
            finally:
                if self._slots is not None:
                    self._slots.release()
            self._limiter.record(turn, limited=response.status == 429)
            logger.debug("%s %s -> %d", request.method, request.url, response.status)
            task = parse(response)
        except BananaError as exc:
            if isinstance(exc, RateLimitError):
                await self._limiter.pause(_retry.requested_delay(exc))
            # Error trackers print the locals of a traceback's frames: the raw
            # answer (which may echo the key) is in this frame and in those of
            # the parser below it, so the error leaves without them.
            response = None
            raise self._redacted(exc).with_traceback(None) from None
        return self._clean(task)

    def _clean(self, task: Task) -> Task:
        """The task with the API key redacted from the text fields people read.

        The failure message, the status word, the model and the object type
        go into messages, logs, the journal and the command line's output.
        The id and the image URL are left as they came: they are used, not
        read, and changing them would lose the task or its image.
        """
        changes: dict[str, Any] = {}
        error = task.error
        if error is not None and self._redactor.found_in(error):
            changes["error"] = self._redactor.text(error)
        for name in ("raw_status", "model", "object"):
            word: str | None = getattr(task, name)
            if word and self._echoes_key(word):
                changes[name] = self._redactor.text(word)
        return attrs.evolve(task, **changes) if changes else task

    def _echoes_key(self, word: str) -> bool:
        """Whether a short field echoes the key; remembered, as words repeat every poll."""
        known = self._words.get(word)
        if known is None:
            if len(self._words) >= 1024:
                self._words.clear()
            known = self._words[word] = self._redactor.found_in(word)
        return known

    async def _take_slot(self, request: HTTPRequest, deadline: float | None) -> None:
        """Wait for a connection slot (see ``_slots``); never past ``deadline``."""
        slots = self._slots
        if slots is None:
            return
        if deadline is None or not slots.locked():
            await slots.acquire()
            return
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock.time())):
                await slots.acquire()
        except TimeoutError:
            raise _not_sent(request, "no connection was free before its deadline") from None

    def _redacted(self, exc: BananaError) -> BananaError:
        """Remove the API key from an exception's message and every text it carries.

        Headers and bodies are kept on exceptions for debugging, so they are
        cleaned too. An exception that passes twice is cleaned twice: a
        second pass finds nothing the first left (at most it redacts a
        little more), and a mark on the exception would be an attribute that
        the errors module never declared.
        """
        clean = self._redactor.text
        exc.args = tuple(clean(arg) if isinstance(arg, str) else arg for arg in exc.args)
        for name in ("body", "msg", "code", "error"):
            value = getattr(exc, name, None)
            if isinstance(value, str):
                setattr(exc, name, clean(value))
        if isinstance(exc, APIStatusError):
            exc.headers = {clean(name): clean(value) for name, value in exc.headers.items()}
        # What an exception was raised from (aiohttp's, with the request's
        # headers; the JSON decoder's, with the whole body) stays behind: the
        # client's errors say what happened in their own words.
        exc.__cause__ = None
        exc.__context__ = None
        return exc

    def _headers_for(self, request: HTTPRequest) -> CIMultiDict[str]:
        key = tuple(request.headers.items())
        merged = self._merged_headers.get(key)
        if merged is None:
            if len(self._merged_headers) >= 64:  # a dialect inventing headers per request
                self._merged_headers.clear()
            merged = self._merged_headers[key] = _Credentials(
                {**request.headers, **self._auth_headers}
            )
        return merged

    async def _wait_for_turn(
        self, request: HTTPRequest, kind: RequestKind, deadline: float
    ) -> float:
        """The request's turn from the rate limiter, never after ``deadline``.

        A request whose turn would come only after ``deadline`` (a 429 pause
        holds every request) fails at once rather than wait for nothing, and
        so does one whose deadline passed.
        """
        left = deadline - self._clock.time()
        if left <= 0:
            raise _not_sent(request, "its deadline passed")
        turn = await self._limiter.acquire(kind, timeout=left)
        if turn is None:
            raise _not_sent(request, "the rate limit or a 429 pause held it past its deadline")
        return turn

    async def _call(
        self,
        request: HTTPRequest,
        parse: Callable[[HTTPResponse], Task],
        should_retry: Callable[[BananaError], bool],
        *,
        deadline: float | None = None,
        patient: bool = False,
        on_send: Callable[[], Awaitable[None]] | None = None,
        on_unsent: Callable[[BananaError], Awaitable[None]] | None = None,
    ) -> Task:
        """Send with retries; no attempt starts once ``deadline`` would be passed.

        With ``patient``, a 429 is sent again however often it comes, until
        ``deadline``: the request was not processed, and the limiter's pause
        and learned rate decide when it goes. ``on_send`` is awaited right
        before each attempt goes on the wire (see :meth:`_request`), and
        ``on_unsent`` with the error of an attempt that is to be sent again
        (``should_retry`` said it was not processed) before the wait for it.
        """
        attempt = 0
        limited: RateLimitError | None = None
        while True:
            try:
                return await self._request(request, parse, deadline=deadline, on_send=on_send)
            except BananaError as exc:
                if patient and isinstance(exc, RateLimitError) and should_retry(exc):
                    logger.debug("%s %s answered 429; sent again", request.method, request.url)
                    limited = exc
                    if on_unsent is not None:
                        await on_unsent(exc)
                    continue
                held = isinstance(exc, APITimeoutError) and not exc.request_sent
                if limited is not None and held:
                    # The deadline came while 429s held it back: say so. (A
                    # timeout after sending may have created the task: that
                    # one is raised as it is.)
                    raise limited from None
                if attempt >= self._max_retries or not should_retry(exc):
                    raise
                attempt += 1
                delay = _retry.retry_delay(attempt, exc, rng=self._rng)
                if deadline is not None and self._clock.time() + delay >= deadline:
                    # A create sent after its deadline would bill a task that
                    # nobody waits for: give up with the error that stopped us.
                    raise
                logger.info(
                    "%s %s failed (%s); retry %d/%d in %.2f s",
                    request.method,
                    request.url,
                    type(exc).__name__,
                    attempt,
                    self._max_retries,
                    delay,
                )
                if on_unsent is not None:
                    await on_unsent(exc)
                await self._clock.sleep(delay)

    # -- the API -------------------------------------------------------------------

    def _prepare(
        self,
        prompt: str | GenerationRequest,
        model: str | None,
        resolution: Resolution | str | None,
        size: AspectRatio | str | None,
        image_urls: Sequence[str] | None,
    ) -> GenerationRequest:
        request = request_from(
            prompt, model=model, resolution=resolution, size=size, image_urls=image_urls
        )
        self._dialect.validate(request, allow_unknown_models=self._allow_unknown_models)
        return request

    def _validate(self, request: GenerationRequest) -> None:
        """Check a request against the dialect (the batch engine's ``validate``)."""
        self._dialect.validate(request, allow_unknown_models=self._allow_unknown_models)

    async def create(
        self,
        prompt: str | GenerationRequest,
        *,
        model: str | None = None,
        resolution: Resolution | str | None = None,
        size: AspectRatio | str | None = None,
        image_urls: Sequence[str] | None = None,
    ) -> Task:
        """Create a task and return it (usually ``queued``) without waiting.

        Args:
            prompt: The prompt, or a complete :class:`~banana_async.GenerationRequest`
                (then pass no other fields).
            model: Model name; default ``nano-banana-2`` (listed by both dialects).
            resolution: ``1k``, ``2k`` or ``4k``; a model that ignores it warns.
            size: Aspect ratio such as ``16:9``.
            image_urls: Reference image URLs (http/https).

        Raises:
            InvalidRequestError: before any HTTP, for invalid input.
            APIConnectionError: the create failed in transit. If
                ``request_sent`` is True the provider may have created (and
                billed) the task; it is not re-sent automatically.
            APIStatusError: the provider refused it (see the subclasses).
            ProviderError: the provider answered with an error body.
            ResponseValidationError: the answer was not a task.
        """
        task = await self._create(self._prepare(prompt, model, resolution, size, image_urls))
        emit = self._emitter(None)
        if emit is not None:
            await emit(TaskEvent(task))
        return task

    async def _create(
        self,
        request: GenerationRequest,
        *,
        deadline: float | None = None,
        patient: bool = False,
        hooks: _batch.SendHooks | None = None,
    ) -> Task:
        """Create a task for a request already validated against the dialect.

        No attempt (first or retry) is sent once ``deadline`` has passed.
        ``patient``: a 429 never ends the create before ``deadline`` (see
        :meth:`_call`). ``hooks`` hear of each attempt as it goes on the
        wire, and of each that is to be sent again.
        """
        http = self._dialect.create_request(request, base_url=self._create_base)
        try:
            task = await self._call(
                http,
                self._dialect.parse_create,
                _retry.should_retry_create,
                deadline=deadline,
                patient=patient,
                on_send=None if hooks is None else hooks.sending,
                on_unsent=None if hooks is None else hooks.not_sent,
            )
        except (ServerError, APIConnectionError) as exc:
            if not isinstance(exc, APIConnectionError) or exc.request_sent:
                # The user must know before sending it again: that could pay twice.
                exc.args = (f"{exc.args[0] if exc.args else exc}{_MAY_BE_BILLED}", *exc.args[1:])
            raise
        logger.info("created task %s (%s)", task.id, task.raw_status)
        if self._adaptive:
            self._remember(task.id, request)
        return task

    def _deadline(self, timeout: float | None) -> tuple[float | None, float | None]:
        """The checked time limit (None: the client's default) and the deadline it sets now."""
        limit = self._wait_timeout if timeout is None else check_timeout(timeout)
        return limit, None if limit is None else self._clock.time() + limit

    def _remember(self, task_id: str, request: GenerationRequest) -> None:
        created = self._created
        if len(created) >= _REMEMBERED_TASKS:
            del created[next(iter(created))]  # the oldest: dicts keep insertion order
        key = (str(request.model), "" if request.resolution is None else str(request.resolution))
        created[task_id] = (key, self._clock.time())

    async def get(self, task: str | Task) -> Task:
        """Query a task's status once (with retries on transient failures).

        Raises:
            NotFoundError: the provider does not know the task.
            BananaError: any other failure, after retries.
        """
        task_id = task.id if isinstance(task, Task) else task
        http = self._dialect.query_request(task_id, base_url=self._query_base)
        return await self._call(http, self._parser_for(task_id), _retry.should_retry_query)

    def _parser_for(self, task_id: str) -> Callable[[HTTPResponse], Task]:
        """Parse a query answer, refusing one about another task."""
        parse_task = self._dialect.parse_task

        def parse(response: HTTPResponse) -> Task:
            return parse_task(response, task_id=task_id)

        return parse

    async def wait(
        self,
        task: str | Task,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        on_status: OnStatus | None = None,
    ) -> Task:
        """Poll a task until it completes, and return it.

        Polls no faster than ``poll_interval`` (plus jitter). Transient failures
        (connection errors, timeouts, 408/429/5xx, unreadable bodies) only delay
        the next poll; one deadline covers every poll and retry.

        Status events: each time a poll answers with a status other than the
        one seen before (the given task's, or none for a bare id), the
        client's ``on_status`` and then this call's are called with a
        :class:`~banana_async.TaskEvent`, the terminal status included, in
        the order seen; polls that bring no change call nothing. An async
        callback is awaited before polling goes on, so its time counts
        against the deadline: keep it short (hand the event to a queue). A
        callback that raises is logged at WARNING on the ``banana_async``
        logger and ignored; the wait goes on.

        Args:
            task: A task (a terminal one returns at once) or a task id (polled
                at once).
            timeout: Seconds until :class:`~banana_async.TaskTimeoutError`;
                default the client's ``wait_timeout``; ``math.inf`` for none.
            poll_interval: Minimum seconds between polls; default the client's.
            on_status: Called with each status change of this wait (after
                the client's own ``on_status``).

        Raises:
            TaskFailedError: the task failed.
            TaskTimeoutError: the deadline passed; carries the last task seen.
            BananaError: a failure that polling again cannot fix (401, 404, ...).
            InvalidRequestError: ``on_status`` is not callable (at once).
        """
        changed = _batch.changes(self._emitter(on_status), None)
        return await self._wait_for(task, timeout, poll_interval, changed)

    def _wait_for(
        self,
        task: str | Task,
        timeout: float | None,
        poll_interval: float | None,
        changed: _batch.Changed | None,
    ) -> Awaitable[Task]:
        """Check the options and start a wait (the batch engine's ``wait``)."""
        interval = self._poll_interval if poll_interval is None else check_interval(poll_interval)
        limit, deadline = self._deadline(timeout)
        return self._wait(task, interval=interval, limit=limit, deadline=deadline, changed=changed)

    async def _wait(
        self,
        task: str | Task,
        *,
        interval: float,
        limit: float | None,
        deadline: float | None,
        changed: _batch.Changed | None = None,
    ) -> Task:
        """Poll ``task`` to a terminal status, reporting each change to ``changed``.

        Raises:
            TaskFailedError: the task failed (after its change was reported).
        """
        changes = None if changed is None else _Changes(changed, task)
        last = await self._poll(
            task, interval=interval, limit=limit, deadline=deadline, changes=changes
        )
        if changes is not None:
            # Outside the deadline's timer: a slow listener cannot turn a
            # finished task into a timeout.
            await changes.saw(last)
        return self._finished(last)

    async def _poll(
        self,
        task: str | Task,
        *,
        interval: float,
        limit: float | None,
        deadline: float | None,
        changes: _Changes | None,
    ) -> Task:
        """Poll ``task`` until it is terminal and return it as last seen.

        ``changes`` hears of each status change before the terminal one.
        """
        clock = self._clock
        policy = self._policy
        last = task if isinstance(task, Task) else None
        task_id = task.id if isinstance(task, Task) else task
        http = self._dialect.query_request(task_id, base_url=self._query_base)
        parse = self._parser_for(task_id)
        self._session_for_call()  # fail fast on a client that is not open
        if last is not None and last.done:
            return last
        context = self._created.get(task_id)
        scout: Scout | None = None
        last_pending: float | None = None
        failures = 0
        # One timer for the whole wait, not one per poll: with thousands of
        # waits, timers are a real share of the event loop's work. It bounds a
        # request in flight at the deadline; the checks below end the wait
        # between requests (on the injected clock, which tests make virtual).
        try:
            async with asyncio.timeout(None if deadline is None else deadline - clock.time()):
                delay, scout = await self._first_delay(
                    task_id, last, context, interval=interval, deadline=deadline, limit=limit
                )
                while True:
                    if delay > 0:
                        await self._sleep_before_poll(
                            delay, interval, deadline, task_id=task_id, last=last, limit=limit
                        )
                    if deadline is not None and deadline - clock.time() <= 0:
                        raise TaskTimeoutError(task_id, limit or 0.0, last)
                    # What a poll saw is learned as of when it asked to go:
                    # time spent waiting for its turn (a 429 pause, which a
                    # shared budget holds in every process) is not the task's.
                    asked = clock.time()
                    try:
                        # The deadline also bounds the wait for a turn of the
                        # rate limiter, on the client's clock: a poll never
                        # goes out after it, whatever clock was injected.
                        last = await self._request(http, parse, deadline=deadline)
                    except BananaError as exc:
                        failures += 1
                        delay = self._poll_failed(exc, failures, task_id, interval)
                        continue
                    failures = 0
                    if last.done:
                        break
                    if changes is not None:
                        await changes.saw(last)
                    delay = policy.poll_delay(interval)
                    if context is not None:
                        last_pending = asked - context[1]
                        if scout is not None:  # only a created task has one
                            delay = scout.saw_running(last_pending, delay)
                    if last.status is TaskStatus.UNKNOWN:
                        logger.debug(
                            "task %s: unknown status %r, still waiting", task_id, last.raw_status
                        )
            self._learn(
                task_id,
                context,
                last,
                last_pending=last_pending,
                seen_at=asked,
                interval=interval,
                scout=scout,
            )
        except TimeoutError:
            # Only the deadline raises the builtin: the transport maps its own
            # timeouts to APITimeoutError.
            raise self._redacted(TaskTimeoutError(task_id, limit or 0.0, last)) from None
        except TaskTimeoutError as exc:
            raise self._redacted(exc) from None
        finally:
            if scout is not None:
                scout.leave()  # however the wait ended: its place goes to another task
        return last

    async def _sleep_before_poll(
        self,
        delay: float,
        interval: float,
        deadline: float | None,
        *,
        task_id: str,
        last: Task | None,
        limit: float | None,
    ) -> None:
        """Sleep ``delay`` (on the poll grid), or until ``deadline`` if that comes first.

        Raises:
            TaskTimeoutError: the deadline came first (raised at the deadline).
        """
        clock = self._clock
        delay = wake_delay(clock.time(), delay, interval)
        if deadline is not None and clock.time() + delay >= deadline:
            await clock.sleep(max(0.0, deadline - clock.time()))
            raise TaskTimeoutError(task_id, limit or 0.0, last)
        await clock.sleep(delay)

    def _poll_failed(self, exc: BananaError, failures: int, task_id: str, interval: float) -> float:
        """The delay before the next poll after a failed one; re-raise what polling cannot fix."""
        if not _retry.is_transient(exc):
            raise exc
        # Never poll faster than asked, even when a retry could come sooner.
        delay = max(
            self._policy.poll_delay(interval), _retry.retry_delay(failures, exc, rng=self._rng)
        )
        logger.info("polling %s failed (%s); next poll in %.2f s", task_id, exc, delay)
        return delay

    async def _first_delay(
        self,
        task_id: str,
        last: Task | None,
        context: tuple[DurationKey, float] | None,
        *,
        interval: float,
        deadline: float | None,
        limit: float | None,
    ) -> tuple[float, Scout | None]:
        """The delay until the first poll, and the task's scout if it is one.

        Only a task this client created may be held (see ``PollPolicy``): its
        first poll waits until the scouts tell when to send it. It sleeps on
        the client's clock in the steps the policy asks for, and asks again
        after each, since nothing else could wake it on an injected clock.

        Raises:
            TaskTimeoutError: the deadline came during a hold.
        """
        if last is None:
            return 0.0, None  # a bare id may be finished already: look at once
        if context is None or not self._adaptive:
            return self._policy.poll_delay(interval), None
        clock = self._clock
        key, created_at = context
        delay, hold, scout = self._policy.first_poll(key, interval, clock.time() - created_at)
        while hold:
            await self._sleep_before_poll(
                delay, interval, deadline, task_id=task_id, last=last, limit=limit
            )
            delay, hold, scout = self._policy.first_poll(
                key, interval, clock.time() - created_at, held=True
            )
        return delay, scout

    def _learn(
        self,
        task_id: str,
        context: tuple[DurationKey, float] | None,
        last: Task,
        *,
        last_pending: float | None,
        seen_at: float,
        interval: float,
        scout: Scout | None,
    ) -> None:
        """Forget a created task seen finished, and learn its duration if it succeeded.

        ``seen_at`` is when the poll that saw it finished asked to go.

        Of several waits on one task, only the first to see it finished does
        both: its duration counts once.
        """
        if context is None or self._created.pop(task_id, None) is None:
            return
        if last.ok:
            self._policy.observe(
                context[0],
                last_pending=last_pending,
                first_done=seen_at - context[1],
                interval=interval,
                scout=scout,
            )

    def _finished(self, task: Task) -> Task:
        # The id and the status only: a provider's error text is in the exception.
        logger.info("task %s %s", task.id, task.status.value)
        if task.status is TaskStatus.FAILED:
            raise self._redacted(TaskFailedError(task))
        return task

    async def generate(
        self,
        prompt: str | GenerationRequest,
        *,
        model: str | None = None,
        resolution: Resolution | str | None = None,
        size: AspectRatio | str | None = None,
        image_urls: Sequence[str] | None = None,
        timeout: float | None = None,
        poll_interval: float | None = None,
        on_status: OnStatus | None = None,
    ) -> Task:
        """Create a task and wait for it: :meth:`create` then :meth:`wait`.

        The deadline counts from the call and covers the create too; if it
        passes, :class:`~banana_async.TaskTimeoutError` carries the created
        task so its id is never lost.

        ``on_status`` (after the client's own) is called with the task's
        creation (``previous`` None), then with each status change, as in
        :meth:`wait`.
        """
        emit = self._emitter(on_status)
        interval = self._poll_interval if poll_interval is None else check_interval(poll_interval)
        limit, deadline = self._deadline(timeout)
        request = self._prepare(prompt, model, resolution, size, image_urls)
        created = await self._create(request, deadline=deadline, patient=True)
        if emit is not None:
            await emit(TaskEvent(created))
        return await self._wait(
            created,
            interval=interval,
            limit=limit,
            deadline=deadline,
            changed=_batch.changes(emit, None),
        )

    async def download(
        self,
        task: Task,
        dest: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> Path:
        """Stream a completed task's image into the directory ``dest``; return its path.

        The file is named after the task id (made safe for any file system)
        with the extension of the image type found in the bytes, written to a
        temporary file and renamed into place, so no partial file is ever
        visible. The API key is never sent to the image host.

        Raises:
            DownloadError: no image URL, not an image, larger than ``max_bytes``.
            APIStatusError: the image host answered with an error (an expired
                URL gives 403 or 404).
            APIConnectionError: the download failed in transit.
        """
        session = self._images_session()
        try:
            path = await download_task_image(
                session, task, Path(dest), timeout=self._download_timeout, max_bytes=max_bytes
            )
        except BananaError as exc:
            raise self._redacted(exc) from None
        # Not the URL: an image host's link may carry a token of its own.
        logger.debug("saved the image of task %s as %s", task.id, path)
        return path

    def _images_session(self) -> aiohttp.ClientSession:
        """The session for image downloads: the borrowed one, or one of our own."""
        session = self._session_for_call()
        if not self._owns_session:
            return session
        if self._image_session is None:
            self._image_session = _transport.make_session(
                connection_limit=self._connection_limit,
                user_agent=f"banana-async/{__version__}",
            )
        return self._image_session

    def generate_many(
        self,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        *,
        concurrency: int = 50,
        timeout: float | None = None,
        poll_interval: float | None = None,
        download_to: str | os.PathLike[str] | None = None,
        journal: str | os.PathLike[str] | Journal | JournalStore | None = None,
        resend_unconfirmed: bool = False,
        retry_failed: bool = False,
        batch: str | None = None,
        model: str | None = None,
        resolution: Resolution | str | None = None,
        size: AspectRatio | str | None = None,
        image_urls: Sequence[str] | None = None,
        on_status: OnStatus | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Generate an image for each input; yield an :class:`Outcome` per input.

        Outcomes come in completion order. A failed, timed-out or rejected
        input becomes an outcome with its error; it never stops the batch.
        Leaving the loop early or cancelling it cancels every poller (wrap it
        in :func:`contextlib.aclosing` to have that happen on the spot)::

            async with contextlib.aclosing(client.generate_many(prompts)) as outcomes:
                async for outcome in outcomes:
                    print(outcome.index, outcome.ok, outcome.task)

        Args:
            inputs: Prompts or :class:`~banana_async.GenerationRequest` objects,
                from an iterable or async iterable, read lazily.
            concurrency: Most tasks in flight at the provider at once.
            timeout: Deadline of each task's wait (default the client's).
            poll_interval: Minimum seconds between polls (default the client's).
            download_to: Save each image into this directory as soon as its
                task completes (the URLs expire in about a day).
            journal: A SQLite file (or an open :class:`~banana_async.Journal`,
                or any :class:`~banana_async.journal.JournalStore`) recording
                every step; running the same batch with the same journal
                resumes it without creating any task twice. A
                ``postgresql://`` URL (with ``batch``) shares the batch with
                every worker, in any process on any machine, given the same
                inputs and the same URL and name: each input is created once
                across them, each worker yields the outcomes of the inputs it
                settled, and the inputs of a worker that dies are finished
                by the others (see :mod:`banana_async.journal.postgres`;
                needs the ``postgres`` extra).
            resend_unconfirmed: Create again the inputs whose create was in
                flight when an earlier journaled run stopped (they may have
                been billed once already).
            retry_failed: Create again, as new tasks, the inputs whose task
                ended ``failed`` in an earlier journaled run (each is billed
                anew); without it they are reported from the journal.
            batch: The batch's name in a Postgres journal (required with
                one, refused with anything else).
            model: Model for prompts given as plain strings.
            resolution: Resolution for plain-string prompts.
            size: Aspect ratio for plain-string prompts.
            image_urls: Reference images for plain-string prompts.
            on_status: Called (after the client's own ``on_status``) with a
                :class:`~banana_async.TaskEvent` whose ``index`` is the
                input's: once when its task is created, then at each status
                change its wait sees (see :meth:`wait`). A task created in an
                earlier run of a journaled batch has no creation event; its
                changes count from the status the journal recorded.

        Raises:
            InvalidRequestError: bad arguments (at once).
            JournalError: a journal that cannot be used: damaged, not a
                journal, in use, another provider's, or another batch's (when
                the first differing input is read); or one that failed while
                the batch ran.
        """
        self._session_for_call()
        emit = self._emitter(on_status)
        options = _batch.BatchOptions(
            concurrency=concurrency,
            timeout=timeout,
            poll_interval=poll_interval,
            defaults={
                "model": model,
                "resolution": resolution,
                "size": size,
                "image_urls": image_urls,
            },
            download_to=download_to,
            journal=journal,
            resend_unconfirmed=resend_unconfirmed,
            retry_failed=retry_failed,
            batch=batch,
        )
        return _batch.run(self._batch_operations(emit), inputs, options)

    def _batch_operations(self, emit: _batch.Emit | None = None) -> _batch.BatchOperations:
        """What the batch engine may do with this client, and nothing more."""

        def create(
            request: GenerationRequest, timeout: float | None, hooks: _batch.SendHooks | None
        ) -> Awaitable[Task]:
            # Patient: a 429 was not processed, and only the deadline ends a
            # batch's create for it (see _call).
            deadline = self._deadline(timeout)[1]
            return self._create(request, deadline=deadline, patient=True, hooks=hooks)

        return _batch.BatchOperations(
            validate=self._validate,
            create=create,
            wait=self._wait_for,
            download=self.download,
            closed=lambda: self._closed,
            provider=(self._dialect.name, self._create_base, self._query_base),
            emit=emit,
        )

    # -- status events -------------------------------------------------------------

    def _emitter(self, on_status: OnStatus | None) -> _batch.Emit | None:
        """What tells the client's ``on_status``, then ``on_status``, of an event.

        None when neither is set: then no event is even built.

        Raises:
            InvalidRequestError: ``on_status`` is not callable.
        """
        listeners = tuple(
            listener
            for listener in (self._on_status, _check_on_status(on_status))
            if listener is not None
        )
        if not listeners:
            return None
        tell = self._tell

        async def emit(event: TaskEvent) -> None:
            for listener in listeners:
                await tell(listener, event)

        return emit

    async def _tell(self, listener: OnStatus, event: TaskEvent) -> None:
        """Call one listener (awaiting an async one); log what it raises, never raise it.

        Awaited in place rather than scheduled: events of one task arrive in
        order, nothing is left running when a wait or the client ends, and a
        slow listener slows its own task rather than piling up events.
        """
        try:
            result = listener(event)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception as exc:  # the user's code: logged, never the end of a wait
            name = getattr(listener, "__qualname__", None) or type(listener).__name__
            details = "".join(traceback.format_exception(exc))
            logger.warning(
                "%s",
                self._redactor.text(
                    f"on_status callback {name} raised {type(exc).__name__} for task "
                    f"{event.task.id} ({event.task.status}); ignored\n{details.rstrip()}"
                ),
            )


class _Changes:
    """One wait's status reports: a call per status change, not per poll."""

    __slots__ = ("_changed", "_reported")

    def __init__(self, changed: _batch.Changed, task: str | Task) -> None:
        self._changed = changed
        # Nothing known of a bare id: its first answer is reported with None.
        self._reported = task.status if isinstance(task, Task) else None

    async def saw(self, task: Task) -> None:
        """Report ``task`` if its status differs from the one last reported."""
        if task.status is not self._reported:
            previous, self._reported = self._reported, task.status
            await self._changed(task, previous)


def _make_limiter(
    requests_per_second: float | None,
    given: RateLimiter | None,
    clock: Clock,
    url: str | None,
    key: str,
    *,
    allow_unshared: bool = False,
) -> RateLimiter:
    if url is not None:
        if given is not None:
            raise InvalidRequestError("pass either rate_limiter or rate_limit_url, not both")
        # Imported here: `import banana_async` must not import redis.
        from banana_async.ratelimit.redis import RedisRateLimiter  # noqa: PLC0415

        return RedisRateLimiter(
            url,
            api_key=key,
            requests_per_second=requests_per_second,
            clock=clock,
            allow_unshared=allow_unshared,
        )
    if given is None:
        return AdaptiveRateLimiter(requests_per_second=requests_per_second, clock=clock)
    if requests_per_second is not None:
        raise InvalidRequestError(
            "pass requests_per_second to the rate_limiter given, not to the client"
        )
    if not isinstance(given, RateLimiter):
        raise InvalidRequestError(
            f"rate_limiter must be a RateLimiter (acquire, record, pause), "
            f"not {type(given).__name__}"
        )
    return given


def _check_on_status(on_status: OnStatus | None) -> OnStatus | None:
    if on_status is not None and not callable(on_status):
        raise InvalidRequestError(
            f"on_status must be a function taking a TaskEvent, not {type(on_status).__name__}"
        )
    return on_status


def _check_key(key: str) -> str:
    """The key, stripped, if it can travel in an HTTP header; else a clear error."""
    if not isinstance(key, str):
        raise InvalidRequestError(f"the API key must be a str, not {type(key).__name__}")
    key = key.strip()
    bad = next((c for c in key if not 0x21 <= ord(c) <= 0x7E), None)
    if bad is not None:
        # Never show the key itself, not even in part.
        what = "a line break" if bad in "\r\n" else f"the character U+{ord(bad):04X}"
        raise InvalidRequestError(
            f"the API key contains {what}; a key is printable ASCII without spaces"
        )
    return key


def _not_sent(request: HTTPRequest, why: str) -> APITimeoutError:
    message = f"{request.method} {request.url} was not sent: {why}"
    return APITimeoutError(message, request_sent=False)
