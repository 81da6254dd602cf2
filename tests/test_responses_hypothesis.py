"""Property: whatever comes back over HTTP, parsing yields a Task or a BananaError.

No JSON, cattrs, Unicode, overflow or date error may escape the dialect layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banana_async import (
    NANO,
    NAVO,
    APIStatusError,
    BananaError,
    ProviderError,
    ResponseValidationError,
    Task,
    TaskStatus,
)
from banana_async.dialects import HTTPResponse
from banana_async.models import url_problem

STATUS_WORDS = [
    "completed",
    "SUCCEEDED",
    "success",
    "done",
    "finished",
    "failed",
    "fail",
    "error",
    "timeout",
    "canceled",
    "Cancelled",
    "queued",
    "pending",
    "waiting",
    "submitted",
    "in_queue",
    "processing",
    "running",
    "generating",
    "IN-PROGRESS",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

timestamps = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=0, max_value=4_000_000_000_000).map(str),
    st.sampled_from(
        [
            "1761635478",
            "1761635478000",
            " 1761635478.5 ",
            "2025-10-28T07:11:18",
            "2025-10-28T07:11:18+08:00",
            "2025-13-45T99:99:99",
            "1e400",
            "-1e400",
            "nan",
            "inf",
            "-inf",
            "",
            "yesterday",
            "9" * 400,
        ]
    ),
    json_values,
)

task_fields: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(max_size=20) | st.integers() | json_values,
    "status": st.sampled_from(STATUS_WORDS) | st.text(max_size=12) | json_values,
    "created": timestamps,
    "object": st.sampled_from(["image", "image.generation", "navobanana"]) | json_values,
    "model": st.sampled_from(["nano-banana-2", "NanoBanana2"]) | json_values,
    "image_url": st.just("https://cdn.example.com/x.png") | json_values,
    "error": st.text(max_size=20) | json_values,
    "code": json_values,
    "msg": json_values,
    "amount": json_values,
    "data": json_values,
}

task_objects = st.fixed_dictionaries({}, optional=task_fields)


def wrap(inner: dict[str, Any], outer: dict[str, Any]) -> dict[str, Any]:
    return {**outer, "data": inner}


wrapped_objects = st.recursive(
    task_objects,
    lambda inner: st.builds(
        wrap,
        inner,
        st.fixed_dictionaries({}, optional={"code": json_values, "msg": json_values}),
    ),
    max_leaves=4,
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    obj = draw(wrapped_objects | json_values)
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-16", "latin-1"])), "replace")


raw_bodies = st.sampled_from(
    [
        b"",
        b"   ",
        b"null",
        b"[]",
        b'{"id": "x", "status": "queued", "created": ' + b"9" * 5000 + b"}",
        b'{"id": ' + b"1" * 5000 + b', "status": "queued"}',
        b'{"id": "x", "status": "queued", "created": 1e999}',
        b'{"id": "x", "status": "queued", "created": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"<html><head><title>502 Bad Gateway</title></head></html>",
        b"<!DOCTYPE html><title>\xff\xfe</title>",
        b"\xef\xbb\xbf" + b'{"id": "bom", "status": "completed"}',
        b"\x00\x01\x02",
        b'{"code": 0, "msg": "ok", "data": {"id": "x", "status": "done"}}',
    ]
)

bodies = st.one_of(st.binary(max_size=300), json_bodies(), raw_bodies)

retry_after_values = st.one_of(
    st.text(max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Mon, 01 Jan 0001 00:00:00 +2359",
            "Fri, 31 Dec 9999 23:59:59 -2359",
            "Sun, 06 Nov 1994 08:49:37 -0000",
            "Thu, 01 Jan 1970 00:00:00 +9999",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "1e999",
            "-1e999",
            "nan",
        ]
    ),
)

headers = st.one_of(
    st.dictionaries(st.text(max_size=15), st.text(max_size=40), max_size=4),
    st.builds(
        lambda extra, value, name: {**extra, name: value},
        st.dictionaries(st.text(max_size=15), st.text(max_size=20), max_size=2),
        retry_after_values,
        st.sampled_from(["Retry-After", "retry-after", "RETRY-AFTER"]),
    ),
)

statuses = st.one_of(st.just(200), st.sampled_from([201, 204, 299]), st.integers(100, 599))


def check(parse: Callable[[HTTPResponse], Task], response: HTTPResponse) -> None:
    outcome: Task | BananaError
    try:
        outcome = parse(response)
    except BananaError as exc:
        outcome = exc
    ok_status = 200 <= response.status <= 299
    if isinstance(outcome, APIStatusError):
        assert not ok_status
        assert outcome.status_code == response.status
        assert isinstance(outcome.body, str)
        assert outcome.retry_after is None or outcome.retry_after >= 0
        return
    assert ok_status  # any other status must have raised an APIStatusError
    if isinstance(outcome, BananaError):
        assert str(outcome)
        return
    assert isinstance(outcome, Task)
    assert isinstance(outcome.id, str)
    assert isinstance(outcome.status, TaskStatus)
    assert isinstance(outcome.raw_status, str)
    word = TaskStatus.from_word(outcome.raw_status)
    if word is TaskStatus.COMPLETED and outcome.status is TaskStatus.FAILED:
        # "completed" without a usable image is a failure of the task, said so
        assert url_problem(outcome.image_url) is not None or not outcome.image_url
        assert outcome.error
    else:
        assert outcome.status is word
    if outcome.ok:
        assert url_problem(outcome.image_url) is None
    assert outcome.created is None or outcome.created.utcoffset() is not None
    for text in (outcome.model, outcome.object, outcome.image_url, outcome.error):
        assert text is None or isinstance(text, str)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(status=statuses, headers=headers, body=bodies)
def test_parsing_yields_a_task_or_a_banana_error(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    response = HTTPResponse(status, headers, body)
    check(NANO.parse_task, response)
    check(NAVO.parse_create, response)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=wrapped_objects)
def test_task_shaped_objects_at_200(obj: dict[str, Any]) -> None:
    response = HTTPResponse(200, {}, json.dumps(obj).encode())
    check(NANO.parse_task, response)
    check(NAVO.parse_create, response)
    check(NAVO.parse_task, response)
    check(NANO.parse_create, response)


def _is_id_like(value: object) -> bool:
    """What may be read as a task id: text, an integer or a finite float (never a bool)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task_id=task_fields["id"],
    status=task_fields["status"],
    rest=st.fixed_dictionaries(
        {}, optional={k: v for k, v in task_fields.items() if k not in ("id", "status", "data")}
    ),
)
def test_a_task_id_is_only_read_from_id_like_values(
    task_id: Any, status: Any, rest: dict[str, Any]
) -> None:
    # Lax string structuring (str() of a dict, a list, None, a bool) would turn a
    # broken body into a task with a made-up id; such a body is not a task.
    response = HTTPResponse(200, {}, json.dumps({**rest, "id": task_id, "status": status}).encode())
    for parse in (NANO.parse_task, NAVO.parse_create):
        try:
            task = parse(response)
        except BananaError:
            continue
        assert _is_id_like(task_id), f"id {task_id!r} was read as {task.id!r}"
        if isinstance(task_id, str | int):
            assert task.id == str(task_id)
        if status is None:  # null status: only a create may default it (to queued)
            assert parse == NAVO.parse_create
            assert task.status is TaskStatus.QUEUED


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task_id=st.text(min_size=1, max_size=20).filter(lambda t: t.strip()) | st.integers(),
    rest=st.fixed_dictionaries(
        {}, optional={k: v for k, v in task_fields.items() if k not in ("id", "status")}
    ),
)
def test_a_create_answer_with_an_id_never_loses_it(task_id: Any, rest: dict[str, Any]) -> None:
    # Whatever else a 200 create answer holds (odd types, code/msg, a status of
    # any shape), an id in it is a task the provider may have billed: the id
    # comes back as a task or on the error.
    body = {**rest, "id": task_id}
    if isinstance(rest.get("data"), dict) and "id" not in rest["data"]:
        body["data"] = {**rest["data"], "id": task_id}
    for parse in (NANO.parse_create, NAVO.parse_create):
        kept = _id_kept_by(parse, HTTPResponse(200, {}, json.dumps(body).encode()))
        assert kept == str(task_id), f"the id {task_id!r} was dropped ({kept!r})"


def _id_kept_by(parse: Callable[[HTTPResponse], Task], response: HTTPResponse) -> object:
    """The id a create answer yields: on the task, or on the error it raised."""
    try:
        return parse(response).id
    except (ProviderError, ResponseValidationError) as exc:
        return exc.task_id if exc.task_id is not None else exc
