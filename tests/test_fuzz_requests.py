"""Fuzzing request validation: any value ends in a valid request or InvalidRequestError.

Strings (blank, huge, lone surrogates, control characters), lists, enums of
the wrong kind, numbers, None and plain objects go into every public
parameter of the request builders, for both dialects: the request model,
``request_from``, the dialects' create and query requests, the client's
``create`` over real HTTP to the fake provider, ``generate_many``'s inputs
and defaults, ``wait``'s options and the client's own options. Each ends in
a request the provider accepts (or a client or a wait) or in
:class:`~banana_async.InvalidRequestError` before anything is sent; never in
another exception.

Example counts follow the Hypothesis profile (see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import banana_async as ba
from banana_async.dialects import NANO, NAVO, Dialect, HTTPRequest, ResolutionIgnoredWarning
from banana_async.models import request_from, text_problem, url_problem
from banana_async.testing import FakeBananaServer, FakeClock
from tests.conftest import API_KEY

DIALECTS = [NANO, NAVO]

_BASE = settings().max_examples  # the loaded profile's (tests/conftest.py)
PURE = settings(max_examples=_BASE * 3)
"""Pure functions cost microseconds: three times the profile's examples."""
HTTP = settings(
    max_examples=max(10, _BASE // 2),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""One request over loopback each: half the profile's examples, on one server per test."""

ENUMS = [*ba.Model, *ba.Resolution, *ba.AspectRatio, *ba.TaskStatus]


class _Text(str):
    """A str subclass, as numpy.str_ or a user's own type would be."""

    __slots__ = ()


class _Opaque:
    """Neither text nor a number nor a collection."""

    def __repr__(self) -> str:
        return "<opaque>"


# Text that is anything: lone surrogates and control characters included.
any_text = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.sampled_from(["", " ", "\t\n", "\x00", "\ud800", "a\udfffb", "é" * 3]),
    st.integers(4000, 6000).map(lambda n: "x" * n),
)
urls = st.one_of(
    st.sampled_from(
        [
            "https://img.example.com/a.png",
            "http://127.0.0.1:8080/ref.jpg",
            "https://[::1]/x",
            "https://[::1/x",
            "https://example.com:99999/x",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "data:image/png;base64,AAAA",
            "/local/path.png",
            "https://",
            "https://ex ample.com/x",
            "https://exa\x00mple.com/",
            "https://bücher.example/x",
            "https://" + "a" * 300 + ".com/x",
            "HTTPS://EXAMPLE.COM/X",
        ]
    ),
    st.builds(lambda host, path: f"https://{host}/{path}", any_text, any_text),
    any_text,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
    st.builds(_Text, any_text),
    st.binary(max_size=8),
    st.sampled_from(ENUMS),
    st.builds(_Opaque),
)
anything = st.one_of(
    scalars,
    st.lists(st.one_of(urls, scalars), max_size=8),
    st.lists(urls, max_size=8).map(tuple),
    st.frozensets(urls, max_size=3),
    st.dictionaries(any_text, scalars, max_size=2),
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four: enough examples get past every check to the wire.

    (``st.one_of(good, good, good, bad)`` would not do: it flattens the
    branches of ``bad``, which are many.)
    """
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 0 else good)


good_urls = st.sampled_from(
    ["https://img.example.com/a.png", "http://127.0.0.1:8080/ref.jpg", "https://[::1]/x"]
)
models = mostly(
    st.sampled_from([*ba.Model, "nano-banana-2", " nano-banana-pro ", "NANO-BANANA-2", "gpt-x"]),
    anything,
)
resolutions = mostly(st.sampled_from([None, *ba.Resolution, "1K", " 2k "]), anything)
sizes = mostly(st.sampled_from([None, *ba.AspectRatio, " 16:9 ", "1:1 "]), anything)
image_url_lists = mostly(
    st.one_of(st.none(), st.lists(good_urls, max_size=3), st.lists(good_urls, max_size=8)),
    st.one_of(st.lists(urls, max_size=8), anything),
)
prompts = mostly(
    st.text(min_size=1, max_size=30), st.one_of(any_text, st.builds(_Text, any_text), anything)
)
request_fields = st.fixed_dictionaries(
    {"model": models, "resolution": resolutions, "size": sizes, "image_urls": image_url_lists}
)
"""The keyword fields of a request, as ``request_from`` and ``client.create`` take them."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Ignore the one warning validation may give (a model ignores the resolution)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionIgnoredWarning)
        yield


def _said_why(exc: ba.InvalidRequestError) -> None:
    """A refusal is a ValueError (as documented) with a message."""
    assert isinstance(exc, ValueError)
    assert str(exc).strip()


def _check_body(request: ba.GenerationRequest, http: HTTPRequest, dialect: Dialect) -> None:
    """The create request is one the provider takes, and carries exactly ``request``."""
    assert http.method == "POST"
    assert http.url == "https://base.example/api/" + dialect.create_path.lstrip("/")
    assert http.body is not None
    body = json.loads(http.body)
    assert isinstance(body, dict)
    # What the provider checks (the fake's rules, which are the API's).
    assert isinstance(body["prompt"], str)
    assert body["prompt"].strip()
    assert body["prompt"] == request.prompt
    assert isinstance(body["model"], str)
    assert body["model"]
    assert body["model"] == str(request.model)
    for name in ("resolution", "size"):
        value = body.get(name)
        assert value is None or isinstance(value, str)
    assert body.get("resolution") == (None if request.resolution is None else request.resolution)
    assert body.get("size") == (None if request.size is None else request.size)
    assert body["image_urls"] == list(request.image_urls)
    assert all(url_problem(url) is None for url in body["image_urls"])


def _check_request(request: ba.GenerationRequest) -> None:
    """A built request holds plain, sendable values only."""
    assert type(request.prompt) is str
    assert request.prompt.strip()
    assert text_problem(request.prompt) is None
    assert isinstance(request.model, str)
    assert request.model.strip()
    assert request.resolution is None or isinstance(request.resolution, ba.Resolution)
    assert request.size is None or isinstance(request.size, ba.AspectRatio)
    assert isinstance(request.image_urls, tuple)
    assert all(type(url) is str and url_problem(url) is None for url in request.image_urls)


@PURE
@given(
    prompt=prompts,
    fields=request_fields,
    allow_unknown=st.booleans(),
    dialect=st.sampled_from(DIALECTS),
)
def test_request_builders_end_in_a_valid_request_or_invalid_request_error(
    prompt: Any, fields: dict[str, Any], allow_unknown: bool, dialect: Dialect
) -> None:
    try:
        with _quiet():
            request = request_from(prompt, **fields)
            _check_request(request)
            dialect.validate(request, allow_unknown_models=allow_unknown)
    except ba.InvalidRequestError as exc:
        _said_why(exc)
        event("refused")
        return
    event("built")
    assert allow_unknown or request.model in dialect.models
    if dialect.max_image_urls is not None:
        assert len(request.image_urls) <= dialect.max_image_urls
    _check_body(
        request, dialect.create_request(request, base_url="https://base.example/api"), dialect
    )


@PURE
@given(
    prompt=prompts,
    fields=st.dictionaries(
        st.sampled_from(["model", "resolution", "size", "image_urls"]), anything, max_size=4
    ),
)
def test_a_request_object_with_more_fields_is_refused(prompt: Any, fields: dict[str, Any]) -> None:
    """``request_from(GenerationRequest, **fields)``: fields beside a request are refused."""
    try:
        built = ba.GenerationRequest(prompt)
    except ba.InvalidRequestError:
        return
    given_fields = {name: value for name, value in fields.items() if value is not None}
    if given_fields:
        with pytest.raises(ba.InvalidRequestError, match="not both"):
            request_from(built, **fields)
    else:
        assert request_from(built, **fields) is built


@PURE
@given(task_id=st.one_of(any_text, st.sampled_from([".", "..", "a/b", "?x=1", "%2F"]), anything))
def test_query_request_takes_any_id_or_refuses_it(task_id: Any) -> None:
    for dialect in DIALECTS:
        try:
            http = dialect.query_request(task_id, base_url="https://base.example/api/")
        except ba.InvalidRequestError as exc:
            _said_why(exc)
            continue
        assert isinstance(task_id, str)
        assert http.method == "GET"
        assert http.body is None
        # The id is exactly one path segment, which no URL library can move.
        parts = urlsplit(http.url)
        assert not parts.query
        assert not parts.fragment
        prefix = "/api/" + dialect.query_path.split("{id}")[0].lstrip("/")
        assert parts.path.startswith(prefix)
        segment = parts.path.removeprefix(prefix)
        assert "/" not in segment
        assert segment.strip(".")
        assert unquote(segment) == task_id


# -- the client, over real HTTP --------------------------------------------------------


@pytest.fixture(params=["nano", "navo"])
async def sending(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ba.BananaClient, Any]]:
    """A client of either dialect and its fake provider, shared by a test's examples."""
    async with (
        FakeBananaServer(api_key=API_KEY, duration=0.0) as server,
        ba.BananaClient(API_KEY, dialect=request.param, base_url=server.url, timeout=10) as client,
    ):
        yield client, server


@HTTP
@given(prompt=prompts, fields=request_fields)
async def test_create_sends_a_valid_request_or_nothing(
    sending: tuple[ba.BananaClient, FakeBananaServer], prompt: Any, fields: dict[str, Any]
) -> None:
    client, server = sending
    before = server.count("create")
    try:
        with _quiet():
            task = await client.create(prompt, **fields)
    except ba.InvalidRequestError as exc:
        _said_why(exc)
        assert server.count("create") == before  # refused before any HTTP
        event("refused")
        return
    event("created")
    # The provider took it: a task exists for it, created from this very request.
    assert server.count("create") == before + 1
    created = server.tasks[task.id]
    expected = request_from(prompt, **fields)
    assert created.body["prompt"] == expected.prompt
    assert created.body["model"] == str(expected.model)
    assert created.body.get("resolution") == expected.resolution
    assert created.body.get("size") == expected.size
    assert created.body["image_urls"] == list(expected.image_urls)


@pytest.fixture
async def batching() -> AsyncIterator[ba.BananaClient]:
    """A client on a virtual clock whose provider finishes every task at once."""
    clock = FakeClock()
    async with (
        FakeBananaServer(api_key=API_KEY, duration=0.0, clock=clock.time) as server,
        ba.BananaClient(API_KEY, base_url=server.url, clock=clock, timeout=10) as client,
    ):
        yield client


@HTTP
@given(
    inputs=st.lists(
        st.one_of(prompts, st.builds(ba.GenerationRequest, st.just("a cat"))), max_size=4
    ),
    model=st.one_of(st.none(), models),
    resolution=resolutions,
    size=sizes,
    image_urls=image_url_lists,
)
async def test_generate_many_gives_one_outcome_per_input_of_any_kind(
    batching: ba.BananaClient,
    inputs: list[Any],
    model: Any,
    resolution: Any,
    size: Any,
    image_urls: Any,
) -> None:
    with _quiet():
        try:
            batch = batching.generate_many(
                inputs,
                model=model,
                resolution=resolution,
                size=size,
                image_urls=image_urls,
                timeout=600,
                poll_interval=1.0,
            )
        except ba.InvalidRequestError as exc:
            _said_why(exc)  # bad defaults: refused at once, before any input is read
            return
        outcomes = [outcome async for outcome in batch]
    assert sorted(outcome.index for outcome in outcomes) == list(range(len(inputs)))
    event(f"{sum(o.ok for o in outcomes)} of {len(outcomes)} inputs created")
    for outcome in outcomes:
        if outcome.ok:
            assert outcome.request is not None
            _check_request(outcome.request)
        else:
            assert isinstance(outcome.error, ba.InvalidRequestError), outcome


options = st.one_of(
    st.sampled_from([0.5, 2, 1e-9, 0.001, 86_400, 86_401, math.inf, -1, 0]), anything
)


@PURE
@given(
    # Short keys only: a key's redactor is compiled per character (about a
    # second for a key of 5,000), and no real key is that long.
    api_key=st.one_of(
        st.just(API_KEY),
        st.none(),
        st.text(max_size=40),
        scalars.filter(lambda value: not isinstance(value, str) or len(value) <= 40),
    ),
    dialect=st.one_of(st.sampled_from(["nano", "NAVO ", "other", NANO]), anything),
    base_url=st.one_of(
        st.sampled_from(["http://127.0.0.1:1", "http://example.com"]), urls, anything
    ),
    poll_interval=options,
    wait_timeout=options,
    timeout=options,
    max_retries=options,
    connection_limit=options,
    requests_per_second=st.one_of(st.none(), options),
)
def test_client_options_end_in_a_client_or_invalid_request_error(
    api_key: Any,
    dialect: Any,
    base_url: Any,
    poll_interval: Any,
    wait_timeout: Any,
    timeout: Any,
    max_retries: Any,
    connection_limit: Any,
    requests_per_second: Any,
) -> None:
    try:
        client = ba.BananaClient(
            api_key,
            dialect=dialect,
            base_url=base_url,
            poll_interval=poll_interval,
            wait_timeout=wait_timeout,
            timeout=timeout,
            max_retries=max_retries,
            connection_limit=connection_limit,
            requests_per_second=requests_per_second,
            rate_limit_url="",
        )
    except ba.InvalidRequestError as exc:
        _said_why(exc)
        message = str(exc)
        if api_key == API_KEY:
            assert API_KEY not in message  # the key never shows, even in a refusal
        return
    assert not client.closed  # never opened: nothing to close
    assert isinstance(client.dialect, Dialect)


@pytest.mark.parametrize("name", ["base_url", "create_base_url", "query_base_url"])
@pytest.mark.parametrize("url", [True, 1, b"http://127.0.0.1:1", ["http://127.0.0.1:1"]])
def test_a_base_url_that_is_not_text_is_refused(name: str, url: object) -> None:
    """Found by the fuzzing above: ``base_url=True`` raised AttributeError from urlsplit."""
    options: dict[str, Any] = {name: url}
    with pytest.raises(ba.InvalidRequestError, match=f"{name} must be an http"):
        ba.BananaClient(API_KEY, rate_limit_url="", **options)


@pytest.fixture
async def waiting() -> AsyncIterator[ba.BananaClient]:
    async with ba.BananaClient(API_KEY, base_url="http://127.0.0.1:9", clock=FakeClock()) as client:
        yield client


@HTTP
@given(timeout=st.one_of(st.none(), options), poll_interval=st.one_of(st.none(), options))
async def test_wait_options_end_in_a_wait_or_invalid_request_error(
    waiting: ba.BananaClient, timeout: Any, poll_interval: Any
) -> None:
    done = ba.Task(id="t-1", status=ba.TaskStatus.COMPLETED, image_url="https://img.example/1.png")
    try:
        # A finished task: the options are checked, then it returns without HTTP.
        assert await waiting.wait(done, timeout=timeout, poll_interval=poll_interval) is done
    except ba.InvalidRequestError as exc:
        _said_why(exc)
