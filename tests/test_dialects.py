"""The pure dialect layer: requests built, recorded responses read, errors mapped.

No event loop and no network: every case is bytes in, a Task or an exception out.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import pytest

from banana_async import (
    NANO,
    NAVO,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BananaError,
    Dialect,
    GenerationRequest,
    InvalidRequestError,
    Model,
    NotFoundError,
    ProviderError,
    RateLimitError,
    Resolution,
    ResolutionIgnoredWarning,
    ResponseValidationError,
    ServerError,
    Task,
    TaskStatus,
    get_dialect,
)
from banana_async.dialects import HTTPRequest, HTTPResponse, error_for_status

SAMPLES = Path(__file__).parent / "samples"
CREATED_TS = 1761635478
IMAGE_URL = "https://cdn.example.com/abc123def456.png"
CREATED = datetime.fromtimestamp(CREATED_TS, UTC)
DIALECTS = pytest.mark.parametrize("dialect", [NANO, NAVO], ids=["nano", "navo"])

NANO_CREATE = "https://zcbservice.aizfw.cn/kyyReactApiServer/v1/banana/images"
NAVO_CREATE = "https://api.globalaiopc.com/v1/image/banana/"
NANO_QUERY = "https://zcbservice.aizfw.cn/kyyReactApiServer/v1/result/"
NAVO_QUERY = "https://zcbservice.aizfw.cn/kyyAiPower/v1/result/"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def response(
    body: bytes | dict[str, Any] | list[Any], status: int = 200, **headers: str
) -> HTTPResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTPResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, raw)


def task_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "abc123def456",
        "object": "image.generation",
        "created": CREATED_TS,
        "model": "nano-banana-2",
        "status": "processing",
        "image_url": None,
        "error": None,
    }
    body.update(fields)
    return body


def parsers(dialect: Dialect) -> list[Any]:
    return [dialect.parse_create, dialect.parse_task]


# --------------------------------------------------------------------------- create_request


@pytest.mark.parametrize(
    ("dialect", "url"), [(NANO, NANO_CREATE), (NAVO, NAVO_CREATE)], ids=["nano", "navo"]
)
def test_create_request_default_url_and_method(dialect: Dialect, url: str) -> None:
    req = dialect.create_request(GenerationRequest("a cat"))
    assert isinstance(req, HTTPRequest)
    assert req.method == "POST"
    assert req.url == url
    assert req.headers["Content-Type"] == "application/json"
    assert "Authorization" not in req.headers  # the client adds credentials, not the dialect


def test_navo_create_path_keeps_its_trailing_slash() -> None:
    assert NAVO.create_request(GenerationRequest("a cat")).url.endswith("/v1/image/banana/")
    url = NAVO.create_request(GenerationRequest("a cat"), base_url="http://127.0.0.1:9").url
    assert url == "http://127.0.0.1:9/v1/image/banana/"


@pytest.mark.parametrize(
    ("dialect", "base", "expected"),
    [
        (NANO, "http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/banana/images"),
        (NANO, "http://127.0.0.1:8080/", "http://127.0.0.1:8080/v1/banana/images"),
        (NANO, "http://127.0.0.1:8080///", "http://127.0.0.1:8080/v1/banana/images"),
        (NANO, "https://proxy.example/api/", "https://proxy.example/api/v1/banana/images"),
        (NAVO, "http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/image/banana/"),
        (NAVO, "http://127.0.0.1:8080//", "http://127.0.0.1:8080/v1/image/banana/"),
        (NAVO, "https://proxy.example/api", "https://proxy.example/api/v1/image/banana/"),
    ],
)
def test_create_request_base_url_override(dialect: Dialect, base: str, expected: str) -> None:
    assert dialect.create_request(GenerationRequest("a cat"), base_url=base).url == expected


@pytest.mark.parametrize(
    ("dialect", "example"),
    [(NANO, "nano-create-request.json"), (NAVO, "navo-create-request.json")],
    ids=["nano", "navo"],
)
def test_create_body_equals_documented_example(dialect: Dialect, example: str) -> None:
    documented = json.loads(sample(example))
    request = GenerationRequest(**documented)
    req = dialect.create_request(request)
    assert req.body is not None
    assert json.loads(req.body) == documented


@DIALECTS
def test_create_body_omits_resolution_and_size_when_none(dialect: Dialect) -> None:
    req = dialect.create_request(GenerationRequest("a cat", model="nano-banana-pro"))
    assert req.body is not None
    assert json.loads(req.body) == {"prompt": "a cat", "model": "nano-banana-pro", "image_urls": []}


@DIALECTS
def test_create_body_carries_every_field_as_wire_strings(dialect: Dialect) -> None:
    urls = ["https://example.com/a.png", "http://example.com/b.jpg"]
    request = GenerationRequest(
        "一只猫", model=Model.NANO_BANANA_PRO, resolution="4K", size="21:9", image_urls=urls
    )
    req = dialect.create_request(request)
    assert req.body is not None
    assert json.loads(req.body.decode("utf-8")) == {
        "prompt": "一只猫",
        "model": "nano-banana-pro",
        "resolution": "4k",
        "size": "21:9",
        "image_urls": urls,
    }


# --------------------------------------------------------------------------- query_request


@pytest.mark.parametrize(
    ("dialect", "prefix"), [(NANO, NANO_QUERY), (NAVO, NAVO_QUERY)], ids=["nano", "navo"]
)
def test_query_request_default_url(dialect: Dialect, prefix: str) -> None:
    req = dialect.query_request("abc123def456")
    assert req.method == "GET"
    assert req.body is None
    assert req.url == prefix + "abc123def456"


@DIALECTS
@pytest.mark.parametrize(
    "base", ["http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://127.0.0.1:8080//"]
)
def test_query_request_base_url_override(dialect: Dialect, base: str) -> None:
    assert dialect.query_request("abc", base_url=base).url == "http://127.0.0.1:8080/v1/result/abc"


@DIALECTS
@pytest.mark.parametrize(
    ("task_id", "segment"),
    [
        ("a/b", "a%2Fb"),
        ("a b", "a%20b"),
        ("a?b=c", "a%3Fb%3Dc"),
        ("100%", "100%25"),
        ("x#y", "x%23y"),
        ("ça-猫", "%C3%A7a-%E7%8C%AB"),
        ("../../admin", "..%2F..%2Fadmin"),
    ],
)
def test_query_request_quotes_the_id(dialect: Dialect, task_id: str, segment: str) -> None:
    url = dialect.query_request(task_id, base_url="http://h.example").url
    assert url == "http://h.example/v1/result/" + segment
    path = urlsplit(url).path
    assert unquote(path.rsplit("/", 1)[1]) == task_id
    assert urlsplit(url).query == ""
    assert urlsplit(url).fragment == ""


@DIALECTS
@pytest.mark.parametrize("task_id", ["", "   ", "\t\n"])
def test_query_request_rejects_an_empty_id(dialect: Dialect, task_id: str) -> None:
    with pytest.raises(InvalidRequestError):
        dialect.query_request(task_id)


@DIALECTS
def test_query_request_rejects_a_non_string_id(dialect: Dialect) -> None:
    with pytest.raises(InvalidRequestError):
        dialect.query_request(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- recorded samples

# What each sample reads as, through parse_create and parse_task alike: either the
# fields of the task, or the exception class.
EXPECTED: dict[str, dict[str, Any] | type[BananaError]] = {
    "nano-create-response.json": {
        "id": "abc123def456",
        "status": TaskStatus.QUEUED,
        "raw_status": "queued",
        "object": "image",
        "model": "nano-banana-2",
        "image_url": None,
        "error": None,
    },
    "navo-create-response.json": {
        "id": "abc123def456",
        "status": TaskStatus.QUEUED,
        "raw_status": "queued",
        "object": "navobanana",
        "model": "navobanana",
        "image_url": None,
        "error": None,
    },
    "nano-result-processing.json": {
        "id": "abc123def456",
        "status": TaskStatus.PROCESSING,
        "raw_status": "processing",
        "object": "image.generation",
        "model": "nano-banana-2",
        "image_url": None,
        "error": None,
    },
    "navo-result-processing.json": {
        "id": "abc123def456",
        "status": TaskStatus.PROCESSING,
        "raw_status": "processing",
        "object": "image.generation",
        "model": "NanoBanana2",
        "image_url": None,
        "error": None,
    },
    "result-completed.json": {
        "id": "abc123def456",
        "status": TaskStatus.COMPLETED,
        "raw_status": "completed",
        "object": "image.generation",
        "model": "nano-banana-2",
        "image_url": "https://cdn.example.com/images/abc123def456.png",
        "error": None,
    },
    "result-failed.json": {
        "id": "abc123def456",
        "status": TaskStatus.FAILED,
        "raw_status": "failed",
        "object": "image.generation",
        "model": "nano-banana-2",
        "image_url": None,
        "error": "content policy violation",
    },
    "wrapped-data.json": {
        "id": "wrap0001",
        "status": TaskStatus.COMPLETED,
        "raw_status": "completed",
        "object": "image.generation",
        "model": "nano-banana-2",
        "image_url": "https://cdn.example.com/images/wrap0001.png",
        "error": None,
    },
    "wrapped-codemsg-ok.json": {
        "id": "wrap0002",
        "status": TaskStatus.PROCESSING,
        "raw_status": "processing",
        "object": "image.generation",
        "model": "nano-banana-pro",
        "image_url": None,
        "error": None,
    },
    "extra-fields.json": {
        "id": "extra0001",
        "status": TaskStatus.COMPLETED,
        "raw_status": "completed",
        "object": "image.generation",
        "model": "nano-banana-pro",
        "image_url": "https://cdn.example.com/images/extra0001.png",
        "error": None,
    },
    "status-uppercase.json": {
        "id": "upper0001",
        "status": TaskStatus.COMPLETED,
        "raw_status": "SUCCEEDED",
        "object": "image.generation",
        "model": "nano-banana-2",
        "image_url": "https://cdn.example.com/images/upper0001.png",
        "error": None,
    },
    "created-string.json": {
        "id": "str0001",
        "status": TaskStatus.QUEUED,
        "raw_status": "queued",
        "object": "image.generation",
        "model": "nano-banana-2",
        "image_url": None,
        "error": None,
    },
    # A request body is not a response: no id.
    "nano-create-request.json": ResponseValidationError,
    "navo-create-request.json": ResponseValidationError,
    # Two levels of "data" are not unwrapped: the outer object holds no task.
    "double-wrapped.json": ResponseValidationError,
    "provider-error-codemsg.json": ProviderError,
    "gateway-502.html": ResponseValidationError,
    "server-500.txt": ResponseValidationError,
}
# Differs between create (a missing status means queued) and query (no status, no task).
SPLIT_SAMPLES = {"create-no-status.json"}


def test_every_sample_has_an_expectation() -> None:
    on_disk = {p.name for p in SAMPLES.iterdir() if p.is_file()}
    assert on_disk == set(EXPECTED) | SPLIT_SAMPLES


# The example bodies of the API description (the examples/ folder beside its
# README) are copied into samples/ byte for byte. Their SHA-256 as published,
# as `sha256sum` prints them:
DOCUMENTED_SHA256 = """
b44d1a333524663cda1f8dc0a866bc82e397a3a6e7f79643374b7c6d56867d5a  nano-create-request.json
1463f6e69cbfdb6b85c127fc7c87f3a9887aea76b8ebe89b5344a8499e41b0cf  nano-create-response.json
b66317c75d4da6d2b0915c489cc82949038adb4e41e2bbaac15a703c787ca432  nano-result-processing.json
b44d1a333524663cda1f8dc0a866bc82e397a3a6e7f79643374b7c6d56867d5a  navo-create-request.json
2739b582b987c2fc5cbeb76d96c49811c528fbc44d9c5af2f399d2658bab740c  navo-create-response.json
268b5d52a3f2f5258f7ce22dd453d344741dbef994a46f62205abb54f9ea770e  navo-result-processing.json
fbd79c3bf98171533a095640c57b15c7a2dd5a8f310ee5355b73dbf04e6bf6db  provider-error-codemsg.json
3e06d6dc99bd9de5ecd7227f8d948b43db2ec8f3884883d4d81fc561cec17ea9  result-completed.json
8bb040687aea19a969a4fabd426bacaaf0989c66b1c9b0a170618438836b4432  result-failed.json
"""
DOCUMENTED = {
    name: digest for digest, name in map(str.split, DOCUMENTED_SHA256.strip().splitlines())
}


def test_samples_include_every_documented_example_verbatim() -> None:
    for name, digest in DOCUMENTED.items():
        assert hashlib.sha256(sample(name)).hexdigest() == digest, name
    assert set(DOCUMENTED) <= set(EXPECTED)  # and each is read by test_sample


@DIALECTS
@pytest.mark.parametrize("method", ["parse_create", "parse_task"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample(dialect: Dialect, method: str, name: str) -> None:
    parse = getattr(dialect, method)
    expected = EXPECTED[name]
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse(response(sample(name)))
        return
    task = parse(response(sample(name)))
    assert isinstance(task, Task)
    assert {field: getattr(task, field) for field in expected} == expected
    assert task.created == CREATED
    assert task.created is not None
    assert task.created.utcoffset() == timedelta(0)
    assert task.created.timestamp() == CREATED_TS
    assert task.done is expected["status"].terminal
    assert task.ok is (expected["status"] is TaskStatus.COMPLETED)


@DIALECTS
def test_create_without_status_reads_as_queued(dialect: Dialect) -> None:
    task = dialect.parse_create(response(sample("create-no-status.json")))
    assert task.id == "nostatus0001"
    assert task.status is TaskStatus.QUEUED
    assert task.created == CREATED
    assert not task.done


@DIALECTS
def test_query_without_status_is_a_validation_error(dialect: Dialect) -> None:
    with pytest.raises(ResponseValidationError) as info:
        dialect.parse_task(response(sample("create-no-status.json")))
    assert "status" in str(info.value)
    assert info.value.status_code == 200
    assert "nostatus0001" in info.value.body


@DIALECTS
def test_provider_error_sample_carries_code_and_msg(dialect: Dialect) -> None:
    for parse in parsers(dialect):
        with pytest.raises(ProviderError) as info:
            parse(response(sample("provider-error-codemsg.json")))
        assert info.value.code == "204"
        assert info.value.msg == "login verification failed"
        assert "login verification failed" in str(info.value)
        assert "login verification failed" in info.value.body


@DIALECTS
def test_provider_error_with_numeric_code(dialect: Dialect) -> None:
    with pytest.raises(ProviderError) as info:
        dialect.parse_task(response({"code": 1001, "msg": "insufficient balance"}))
    assert info.value.code == "1001"
    assert info.value.msg == "insufficient balance"


@DIALECTS
def test_provider_error_wrapped_in_data(dialect: Dialect) -> None:
    with pytest.raises(ProviderError) as info:
        dialect.parse_task(response({"data": {"code": "401", "msg": "bad key"}}))
    assert info.value.code == "401"
    assert info.value.msg == "bad key"


@DIALECTS
def test_unknown_extra_fields_are_ignored(dialect: Dialect) -> None:
    body = task_body(amount=0.05, cost={"usd": 0.05}, tags=["x"], progress=None)
    assert dialect.parse_task(response(body)) == dialect.parse_task(response(task_body()))


@DIALECTS
def test_one_level_of_data_is_unwrapped(dialect: Dialect) -> None:
    plain = dialect.parse_task(response(task_body()))
    assert dialect.parse_task(response({"data": task_body()})) == plain
    assert dialect.parse_create(response({"code": 0, "msg": "ok", "data": task_body()})) == plain


@DIALECTS
def test_two_levels_of_data_are_not_unwrapped(dialect: Dialect) -> None:
    for parse in parsers(dialect):
        with pytest.raises(ResponseValidationError):
            parse(response({"data": {"data": task_body()}}))


@DIALECTS
def test_data_is_not_unwrapped_when_the_outer_object_is_a_task(dialect: Dialect) -> None:
    body = task_body(id="outer", data={"id": "inner", "status": "completed"})
    task = dialect.parse_task(response(body))
    assert task.id == "outer"
    assert task.status is TaskStatus.PROCESSING


@DIALECTS
def test_created_as_string_is_read(dialect: Dialect) -> None:
    task = dialect.parse_task(response(task_body(created=str(CREATED_TS))))
    assert task.created == CREATED
    assert task.created is not None
    assert task.created.tzinfo is not None


@DIALECTS
def test_created_missing_or_null_is_none(dialect: Dialect) -> None:
    body = task_body()
    del body["created"]
    assert dialect.parse_task(response(body)).created is None
    assert dialect.parse_task(response(task_body(created=None))).created is None


# --------------------------------------------------------------------------- status words

STATUS_WORDS: list[tuple[str, TaskStatus]] = [
    *((w, TaskStatus.COMPLETED) for w in ["completed", "succeeded", "success", "done", "finished"]),
    *(
        (w, TaskStatus.FAILED)
        for w in ["failed", "fail", "error", "timeout", "canceled", "cancelled"]
    ),
    *(
        (w, TaskStatus.QUEUED if i < 5 else TaskStatus.PROCESSING)
        for i, w in enumerate(
            [
                "queued",
                "pending",
                "waiting",
                "submitted",
                "in_queue",
                "processing",
                "running",
                "generating",
                "in_progress",
            ]
        )
    ),
]


@DIALECTS
@pytest.mark.parametrize(("word", "status"), STATUS_WORDS)
@pytest.mark.parametrize(
    "spell", [str.lower, str.upper, str.title], ids=["lower", "upper", "title"]
)
def test_status_words_case_insensitive(
    dialect: Dialect, word: str, status: TaskStatus, spell: Callable[[str], str]
) -> None:
    raw = spell(word)
    task = dialect.parse_task(response(task_body(status=raw, image_url=IMAGE_URL)))
    assert task.status is status
    assert task.raw_status == raw
    assert task.done is (status in (TaskStatus.COMPLETED, TaskStatus.FAILED))


@DIALECTS
def test_in_progress_words_never_read_as_terminal(dialect: Dialect) -> None:
    for word, status in STATUS_WORDS:
        if status in (TaskStatus.QUEUED, TaskStatus.PROCESSING):
            assert not dialect.parse_task(response(task_body(status=word))).done


@DIALECTS
@pytest.mark.parametrize("word", ["Baking 🍌", "completed!", "OK", "", "  weird  "])
def test_unknown_status_word_is_kept_verbatim(dialect: Dialect, word: str) -> None:
    task = dialect.parse_task(response(task_body(status=word)))
    assert task.status is TaskStatus.UNKNOWN
    assert task.raw_status == word
    assert not task.done
    assert not task.ok


# --------------------------------------------------------------------------- HTTP errors


# Each HTTP status and the error class it maps to, for API answers and
# error_for_status alike.
STATUS_CLASSES = [
    (400, BadRequestError),
    (422, BadRequestError),
    (401, AuthenticationError),
    (403, AuthenticationError),
    (404, NotFoundError),
    (429, RateLimitError),
    (500, ServerError),
    (502, ServerError),
    (503, ServerError),
    (599, ServerError),
    (418, APIStatusError),
    (302, APIStatusError),
    (409, APIStatusError),
]


@DIALECTS
@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
def test_http_status_maps_to_error_class(
    dialect: Dialect, status: int, cls: type[APIStatusError]
) -> None:
    body = b'{"error": {"message": "something precise went wrong"}}'
    for parse in parsers(dialect):
        with pytest.raises(APIStatusError) as info:
            parse(response(body, status))
        assert type(info.value) is cls
        assert info.value.status_code == status
        assert info.value.body == body.decode()
        assert str(status) in str(info.value)
        assert "something precise went wrong" in str(info.value)
        assert info.value.retry_after is None


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
def test_error_for_status_is_decided_from_bytes(status: int, cls: type[APIStatusError]) -> None:
    answer = HTTPResponse(status, {"Retry-After": "7"}, b'{"message": "gone   for\n good"}')
    error = error_for_status(answer)
    assert type(error) is cls
    assert error.status_code == status
    assert error.body == '{"message": "gone   for\n good"}'
    assert error.retry_after == 7.0
    assert error.headers == {"Retry-After": "7"}
    assert f"HTTP {status} " in str(error)
    assert "gone for good" in str(error)  # the body's message, on one line


def test_error_for_status_reads_an_html_page_and_a_redirect() -> None:
    page = b"<!DOCTYPE html><html><head><title>Access  Denied</title></head></html>"
    denied = error_for_status(HTTPResponse(403, {"Content-Type": "text/html"}, page))
    assert isinstance(denied, AuthenticationError)
    assert "HTML page 'Access Denied'" in str(denied)
    assert denied.retry_after is None
    moved = error_for_status(HTTPResponse(301, {"Location": "https://elsewhere.example/x"}))
    assert type(moved) is APIStatusError
    assert "unexpected status" in str(moved)
    assert "redirect to https://elsewhere.example/x" in str(moved)
    assert "empty body" in str(moved)


def test_error_for_status_keeps_a_bounded_body() -> None:
    error = error_for_status(HTTPResponse(502, {}, b"x" * 100_000))
    assert isinstance(error, ServerError)
    assert len(error.body) <= 4096
    assert len(str(error)) < 500


@DIALECTS
def test_error_status_even_with_a_task_body(dialect: Dialect) -> None:
    with pytest.raises(ServerError):
        dialect.parse_task(response(task_body(status="completed"), 500))


@DIALECTS
def test_redirect_is_not_followed_and_says_where(dialect: Dialect) -> None:
    with pytest.raises(APIStatusError) as info:
        dialect.parse_task(response(b"", 302, Location="https://elsewhere.example/x"))
    assert type(info.value) is APIStatusError
    assert "https://elsewhere.example/x" in str(info.value)
    assert info.value.headers["Location"] == "https://elsewhere.example/x"


@DIALECTS
@pytest.mark.parametrize("header", ["Retry-After", "retry-after", "RETRY-AFTER"])
def test_rate_limit_retry_after_seconds(dialect: Dialect, header: str) -> None:
    resp = HTTPResponse(429, {header: "7"}, b'{"error": "slow down"}')
    with pytest.raises(RateLimitError) as info:
        dialect.parse_create(resp)
    assert info.value.retry_after == 7.0
    assert "slow down" in str(info.value)


@DIALECTS
def test_rate_limit_retry_after_http_date(dialect: Dialect) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with pytest.raises(RateLimitError) as info:
        dialect.parse_task(response(b"", 429, Retry_After=when))
    assert info.value.retry_after is not None
    assert 100.0 <= info.value.retry_after <= 121.0


@DIALECTS
def test_rate_limit_without_or_with_junk_retry_after(dialect: Dialect) -> None:
    with pytest.raises(RateLimitError) as info:
        dialect.parse_task(response(b"", 429))
    assert info.value.retry_after is None
    with pytest.raises(RateLimitError) as info:
        dialect.parse_task(response(b"", 429, Retry_After="soon-ish"))
    assert info.value.retry_after is None


@DIALECTS
def test_server_error_retry_after_is_kept(dialect: Dialect) -> None:
    with pytest.raises(ServerError) as info:
        dialect.parse_task(response(b"", 503, Retry_After="30"))
    assert info.value.retry_after == 30.0


@DIALECTS
def test_html_error_page_message_names_its_title(dialect: Dialect) -> None:
    page = sample("gateway-502.html")
    with pytest.raises(ServerError) as info:
        dialect.parse_task(response(page, 502))
    assert "502 Bad Gateway" in str(info.value)
    assert "<center>" not in str(info.value)
    assert info.value.body == page.decode()
    assert info.value.status_code == 502


@DIALECTS
def test_html_page_with_200_is_a_validation_error_naming_its_title(dialect: Dialect) -> None:
    for parse in parsers(dialect):
        with pytest.raises(ResponseValidationError) as info:
            parse(response(sample("gateway-502.html"), 200))
        assert "502 Bad Gateway" in str(info.value)
        assert info.value.status_code == 200


@DIALECTS
def test_plain_text_500(dialect: Dialect) -> None:
    with pytest.raises(ServerError) as info:
        dialect.parse_task(response(sample("server-500.txt"), 500))
    assert "upstream worker crashed" in str(info.value)
    assert info.value.body == sample("server-500.txt").decode()


@DIALECTS
def test_huge_error_body_is_bounded(dialect: Dialect) -> None:
    body = b"x" * 100_000
    with pytest.raises(ServerError) as info:
        dialect.parse_task(response(body, 500))
    assert len(str(info.value)) < 1000
    assert len(info.value.body) < 10_000


@DIALECTS
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"this is not json", "not JSON"),
        (b"{truncated", "not JSON"),
        (b"[1, 2, 3]", "list"),
        (b'"just a string"', "str"),
        (b"42", "int"),
        (b"null", "NoneType"),
        (b"\xff\xfe\x00garbage", "not JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object(dialect: Dialect, body: bytes, needle: str) -> None:
    for parse in parsers(dialect):
        with pytest.raises(ResponseValidationError) as info:
            parse(response(body))
        assert needle in str(info.value)
        assert info.value.status_code == 200


@DIALECTS
@pytest.mark.parametrize(
    "fields",
    [
        {"id": {"nested": "object"}},
        {"id": ["abc"]},
        {"id": True},
        {"id": None},
        {"id": float("inf")},
    ],
    ids=repr,
)
def test_ids_of_wrong_types_are_validation_errors(dialect: Dialect, fields: dict[str, Any]) -> None:
    for parse in parsers(dialect):
        with pytest.raises(ResponseValidationError) as info:
            parse(response(task_body(**fields)))
        assert info.value.status_code == 200
        assert info.value.body


@DIALECTS
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"created": "yesterday"}, {"created": None}),
        ({"created": True}, {"created": None}),
        ({"created": 1e300}, {"created": None}),
        ({"created": [CREATED_TS]}, {"created": None}),
        ({"model": ["nano-banana-2"]}, {"model": '["nano-banana-2"]'}),
        ({"object": {"kind": "image"}}, {"object": '{"kind": "image"}'}),
        ({"model": 2}, {"model": "2"}),
        ({"status": {"word": "completed"}}, {"raw_status": '{"word": "completed"}'}),
        ({"status": 2}, {"raw_status": "2", "status": TaskStatus.UNKNOWN}),
        ({"id": 1.5}, {"id": "1.5"}),
        ({"id": 12345.0}, {"id": "12345"}),
        ({"id": 1e300}, {"id": "1e+300"}),
    ],
    ids=repr,
)
def test_fields_not_needed_to_act_never_cost_the_id(
    dialect: Dialect, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    # A billed task must not be lost over a field the client does not need.
    for parse in parsers(dialect):
        task = parse(response(task_body(**fields)))
        for name, value in expected.items():
            assert getattr(task, name) == value
        if "id" not in expected:
            assert task.id == "abc123def456"


@DIALECTS
@pytest.mark.parametrize(
    ("image_url", "problem"),
    [
        (None, "has no image URL"),
        ("", "has no image URL"),
        ({"href": "https://x"}, "has no image URL"),
        ("http://[::1/x.png", "cannot be parsed"),
        ("http://" + "a" * 300 + "/x.png", "invalid host name"),
        ("ftp://cdn.example.com/x.png", "not an http(s) URL"),
        ("/relative/x.png", "not an http(s) URL"),
    ],
    ids=repr,
)
def test_a_completed_task_without_a_usable_image_url_is_a_failed_task(
    dialect: Dialect, image_url: Any, problem: str
) -> None:
    # No later poll can mend a finished task: it ends now, clearly, not at the
    # deadline of a wait that keeps polling.
    task = dialect.parse_task(response(task_body(status="completed", image_url=image_url)))
    assert task.status is TaskStatus.FAILED
    assert task.raw_status == "completed"
    assert task.error is not None
    assert problem in task.error
    assert "completed" in task.error


@DIALECTS
@pytest.mark.parametrize(
    ("image_url", "read_as"),
    [
        ({"url": IMAGE_URL}, IMAGE_URL),
        ([IMAGE_URL], IMAGE_URL),
        (IMAGE_URL, IMAGE_URL),
    ],
    ids=repr,
)
def test_image_url_in_an_object_or_a_list_of_one(
    dialect: Dialect, image_url: Any, read_as: str
) -> None:
    task = dialect.parse_task(response(task_body(status="completed", image_url=image_url)))
    assert task.ok
    assert task.image_url == read_as


@DIALECTS
def test_missing_id_is_a_validation_error(dialect: Dialect) -> None:
    body = task_body()
    del body["id"]
    for parse in parsers(dialect):
        with pytest.raises(ResponseValidationError, match="id"):
            parse(response(body))


@DIALECTS
def test_numeric_id_is_accepted_as_text(dialect: Dialect) -> None:
    task = dialect.parse_task(response(task_body(id=1234567890123)))
    assert task.id == "1234567890123"
    assert isinstance(task.id, str)


@DIALECTS
def test_error_object_is_read_as_its_message(dialect: Dialect) -> None:
    body = task_body(status="failed", error={"code": 7, "message": "NSFW content"})
    task = dialect.parse_task(response(body))
    assert task.status is TaskStatus.FAILED
    assert task.error == "NSFW content"


@DIALECTS
def test_empty_image_url_reads_as_none(dialect: Dialect) -> None:
    assert dialect.parse_task(response(task_body(image_url=""))).image_url is None


# --------------------------------------------------------------------------- validate


def request(model: str = "nano-banana-2", **fields: Any) -> GenerationRequest:
    return GenerationRequest("a cat", model=model, **fields)


@DIALECTS
def test_validate_rejects_an_unknown_model(dialect: Dialect) -> None:
    with pytest.raises(InvalidRequestError, match="nano-banana-9"):
        dialect.validate(request("nano-banana-9"))


@DIALECTS
def test_validate_allows_an_unknown_model_when_asked(dialect: Dialect) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dialect.validate(request("nano-banana-9", resolution="4k"), allow_unknown_models=True)


@pytest.mark.parametrize(
    ("dialect", "model"),
    [(NANO, "nano-banana-fast"), (NAVO, "nano-banana"), (NAVO, "nano-banana-pro-stable")],
)
def test_validate_rejects_the_other_dialects_models(dialect: Dialect, model: str) -> None:
    with pytest.raises(InvalidRequestError):
        dialect.validate(request(model))


@pytest.mark.parametrize(
    ("dialect", "models"),
    [
        (
            NANO,
            [
                "nano-banana",
                "nano-banana-pro",
                "nano-banana-pro-stable",
                "nano-banana-2-stable",
                "nano-banana-2",
            ],
        ),
        (NAVO, ["nano-banana-fast", "nano-banana-pro", "nano-banana-2"]),
    ],
    ids=["nano", "navo"],
)
def test_validate_accepts_documented_models(dialect: Dialect, models: list[str]) -> None:
    for model in models:
        dialect.validate(request(model))
        dialect.validate(request(Model(model)))


def test_nano_takes_at_most_six_reference_images() -> None:
    urls = [f"https://example.com/{i}.png" for i in range(7)]
    NANO.validate(request(image_urls=urls[:6]))
    with pytest.raises(InvalidRequestError, match="6"):
        NANO.validate(request(image_urls=urls))


def test_navo_takes_any_number_of_reference_images() -> None:
    NAVO.validate(request(image_urls=[f"https://example.com/{i}.png" for i in range(100)]))


def test_nano_warns_when_nano_banana_2_gets_2k() -> None:
    with pytest.warns(ResolutionIgnoredWarning, match="2k"):
        NANO.validate(request("nano-banana-2", resolution="2k"))


@pytest.mark.parametrize("resolution", list(Resolution))
def test_navo_warns_for_any_resolution_on_nano_banana_fast(resolution: Resolution) -> None:
    with pytest.warns(ResolutionIgnoredWarning, match="nano-banana-fast"):
        NAVO.validate(request("nano-banana-fast", resolution=resolution))


@pytest.mark.parametrize(
    ("dialect", "model", "resolution"),
    [
        (NANO, "nano-banana-pro", "4k"),
        (NANO, "nano-banana-pro-stable", "2k"),
        (NANO, "nano-banana-2", "1k"),
        (NANO, "nano-banana", None),
        (NAVO, "nano-banana-pro", "4k"),
        (NAVO, "nano-banana-2", "2k"),
        (NAVO, "nano-banana-fast", None),
    ],
)
def test_no_warning_when_the_resolution_is_honoured(
    dialect: Dialect, model: str, resolution: str | None
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dialect.validate(request(model, resolution=resolution))


def test_resolution_warning_is_a_user_warning() -> None:
    assert issubclass(ResolutionIgnoredWarning, UserWarning)


# --------------------------------------------------------------------------- get_dialect


@pytest.mark.parametrize(
    ("name", "expected"),
    [("nano", NANO), ("NANO", NANO), (" Nano ", NANO), ("navo", NAVO), ("NaVo", NAVO)],
)
def test_get_dialect_by_name(name: str, expected: Dialect) -> None:
    assert get_dialect(name) is expected


def test_get_dialect_passes_an_instance_through() -> None:
    custom = attrs.evolve(NANO, name="custom", create_base_url="https://other.example")
    assert get_dialect(custom) is custom
    assert get_dialect(NAVO) is NAVO


@pytest.mark.parametrize("name", ["nanoo", "", "openai"])
def test_get_dialect_rejects_an_unknown_name(name: str) -> None:
    with pytest.raises(InvalidRequestError, match="nano"):
        get_dialect(name)


def test_dialect_names() -> None:
    assert NANO.name == "nano"
    assert NAVO.name == "navo"


# --------------------------------------------------------------------------- careless providers


@DIALECTS
@pytest.mark.parametrize(
    "extra",
    [
        {"code": 0, "msg": "task submitted"},
        {"code": "0", "msg": "ok"},
        {"code": 200, "msg": "success"},
        {"code": "SUCCESS"},
        {"msg": "task submitted"},
    ],
    ids=repr,
)
def test_a_create_answer_with_an_id_and_a_success_code_is_a_created_task(
    dialect: Dialect, extra: dict[str, Any]
) -> None:
    body = {"id": "abc123", **extra}
    task = dialect.parse_create(response(body))
    assert task.id == "abc123"
    assert task.status is TaskStatus.QUEUED
    # wrapped, the outer code travels with the inner task
    task = dialect.parse_create(response({**extra, "data": {"id": "abc123"}}))
    assert task.id == "abc123"


@DIALECTS
@pytest.mark.parametrize(
    "body",
    [
        {"id": "abc123", "code": 500, "msg": "insufficient balance"},
        {"id": "abc123", "code": "E1001", "msg": "busy"},
        {"code": 1001, "msg": "busy", "data": {"id": "abc123"}},
    ],
    ids=repr,
)
def test_an_error_code_beside_an_id_keeps_the_id(dialect: Dialect, body: dict[str, Any]) -> None:
    for parse in parsers(dialect):
        with pytest.raises(ProviderError) as info:
            parse(response(body))
        assert info.value.task_id == "abc123"
        assert "abc123" in str(info.value)


@DIALECTS
def test_a_code_msg_error_without_an_id_has_no_task_id(dialect: Dialect) -> None:
    with pytest.raises(ProviderError) as info:
        dialect.parse_create(response(sample("provider-error-codemsg.json")))
    assert info.value.task_id is None


@DIALECTS
def test_a_success_code_without_any_id_is_no_task(dialect: Dialect) -> None:
    # It may have created a task whose id we never got: not "nothing created".
    with pytest.raises(ResponseValidationError, match="id"):
        dialect.parse_create(response({"code": 0, "msg": "ok"}))


@DIALECTS
def test_a_query_answer_about_another_task_is_refused(dialect: Dialect) -> None:
    body = task_body(id="someone-else", status="completed", image_url=IMAGE_URL)
    with pytest.raises(ResponseValidationError, match="someone-else"):
        dialect.parse_task(response(body), task_id="abc123def456")
    assert dialect.parse_task(response(body)).id == "someone-else"  # no id asked: no check


@DIALECTS
def test_a_task_id_with_a_lone_surrogate_is_refused_but_kept(dialect: Dialect) -> None:
    body = json.dumps(task_body(id="bad\ud800")).encode()  # ensure_ascii: "\\ud800"
    for parse in parsers(dialect):
        with pytest.raises(ResponseValidationError, match="surrogate") as info:
            parse(response(body))
        assert info.value.task_id == "bad\ud800"
        str(info.value).encode("utf-8")  # the message itself is printable
    with pytest.raises(InvalidRequestError, match="surrogate"):
        dialect.query_request("bad\ud800")


@DIALECTS
@pytest.mark.parametrize("task_id", [".", "..", "...", "a.b", "../x", "%2E%2E"])
def test_no_task_id_can_change_the_query_path(dialect: Dialect, task_id: str) -> None:
    url = dialect.query_request(task_id, base_url="http://127.0.0.1:1/api").url
    prefix = "http://127.0.0.1:1/api/v1/result/"
    assert url.startswith(prefix)
    segment = url.removeprefix(prefix)
    assert "/" not in segment
    assert segment.strip(".")  # never a dot segment that a URL library resolves
    assert unquote(segment) == task_id


@DIALECTS
def test_text_for_people_never_holds_a_lone_surrogate(dialect: Dialect) -> None:
    body = task_body(status="failed", error="refused \ud800", model="m\udfff")
    task = dialect.parse_task(response(json.dumps(body).encode()))
    assert task.error == "refused \\ud800"
    assert task.model == "m\\udfff"
    with pytest.raises(ProviderError) as info:
        dialect.parse_create(response(json.dumps({"code": "E\ud800", "msg": "no \ud800"}).encode()))
    str(info.value).encode("utf-8")
    assert info.value.msg == "no \\ud800"


@DIALECTS
@pytest.mark.parametrize("code", [None, 0.0, 200.0], ids=repr)
def test_a_null_or_float_success_code_beside_an_id_is_a_task(dialect: Dialect, code: Any) -> None:
    task = dialect.parse_create(response({"id": "abc123", "code": code, "msg": "task submitted"}))
    assert task.id == "abc123"
