"""The fake server itself: routing, answers, faults and budgets applied per request.

The public names are re-exported from :mod:`banana_async.testing`; see there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
import types
from collections import deque
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote, unquote

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from banana_async._checks import count_problem
from banana_async._png import make_png
from banana_async.testing._budget import LIMITED_KINDS, Bucket, RequestBudget, whole_seconds
from banana_async.testing._common import reason_phrase
from banana_async.testing._faults import ERROR_TYPES, Fault, FaultTarget
from banana_async.testing._profiles import FaultProfile, FaultProfileName
from banana_async.testing._tasks import (
    DialectName,
    FakeTask,
    RecordedRequest,
    RequestKind,
    TaskOutcome,
    TaskScript,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["FakeBananaServer"]

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


def _edited(response: web.Response, fault: Fault) -> web.Response:
    """The JSON ``response`` with the fields of an ``edit`` fault changed."""
    if response.status >= 400 or not isinstance(response.body, bytes):
        return response
    data = json.loads(response.body)
    for name in fault.remove:
        data.pop(name, None)
    data.update(fault.changes)
    return web.json_response(data, status=response.status)


def _gone(request: web.Request) -> bool:
    """Whether the client's connection is closed: no answer can reach it now."""
    transport = request.transport
    return transport is None or transport.is_closing()


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
    provider does; :attr:`budget` changes it while the server runs. Pass
    ``faults=`` (a :class:`FaultProfile` or the name of one, such as
    ``"flaky"``) and ``seed=`` to strike requests with a seeded mix of
    faults; :attr:`faults` changes it while the server runs.

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
        faults: FaultProfile | FaultProfileName | None = None,
        seed: int | None = None,
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
        self._buckets: dict[str | None, Bucket] = {}
        self.budget = budget
        self._profile: FaultProfile | None = None
        self.faults = faults
        if seed is None:
            # Drawn and kept, so that a failing run can be repeated.
            seed = random.SystemRandom().randrange(2**32)
        self._seed = seed
        self._fault_rng = random.Random(seed)
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
        if problem := count_problem(times, "times"):
            raise ValueError(problem)
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

    @property
    def faults(self) -> FaultProfile | None:
        """The fault profile requests are struck from, or ``None`` for none.

        Set it (a :class:`FaultProfile`, the name of one, or ``None``) at any
        time, for example to let a storm end on a healthy provider. Faults
        queued with :meth:`inject` strike first; a request the
        :attr:`budget` refuses draws nothing.

        Raises:
            TypeError: If set to something other than a profile, a name or ``None``.
            ValueError: If set to an unknown profile name.
        """
        return self._profile

    @faults.setter
    def faults(self, value: FaultProfile | FaultProfileName | None) -> None:
        if isinstance(value, str):
            value = FaultProfile.named(value)
        if value is not None and not isinstance(value, FaultProfile):
            raise TypeError(
                f"faults must be a FaultProfile, a profile name or None, not {type(value).__name__}"
            )
        self._profile = value

    @property
    def seed(self) -> int:
        """The seed of the fault profile's draws (drawn at random when none was given)."""
        return self._seed

    def unanswered_creates(self) -> list[str]:
        """The tasks created whose create answer never reached the client.

        A reset after processing (``Fault.reset(process=True)``) makes one,
        and so does a stalled create whose client had gone when its answer
        was ready (the task is created all the same, as a real provider
        would). A client cannot know these tasks exist: it must report their
        inputs as unconfirmed, never create them again on its own.

        Returns:
            Their ids, in the order their creates arrived.
        """
        return [
            r.task_id
            for r in self.requests
            if r.kind == "create" and r.task_id is not None and not r.answered
        ]

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
        if budget is None or kind not in LIMITED_KINDS:
            return None
        now = self.now()
        key = request.headers.get("Authorization")
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(budget.capacity, now)
        wait = bucket.take(now, budget)
        if wait is None:
            return None
        response = _error(429, "too many requests: rate limit exceeded", ERROR_TYPES[429])
        if budget.retry_after:
            response.headers["Retry-After"] = whole_seconds(wait)
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
        self._update(record, task_id=task_id)

    def _update(self, record: RecordedRequest, **changes: Any) -> None:
        """Replace a recorded request with a copy with ``changes``.

        The record in the list may already be a copy (a create names its task
        once processed): copies share the original's headers object, which
        no other record has.
        """
        for index in range(len(self.requests) - 1, -1, -1):
            current = self.requests[index]
            if current.headers is record.headers:
                self.requests[index] = attrs.evolve(current, **changes)
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
        if refusal is not None:  # before faults: a refused request consumes none
            self.requests.append(record)
            return refusal
        fault = self._take_fault(route.kind)
        if fault is None and self._profile is not None:
            fault = self._profile.draw(route.kind, self._fault_rng)
        if fault is not None:
            record = attrs.evolve(record, fault=fault)
        self.requests.append(record)
        if fault is None:
            return self._answer(request, route, record)
        response = await self._answer_with_fault(request, route, record, fault)
        if fault.action in ("reset", "stall") and _gone(request):
            self._update(record, answered=False)
        return response

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
            reason=reason_phrase(fault.status_code),
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
