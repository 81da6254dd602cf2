"""The public data model: requests validated on construction, tasks and statuses."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from banana_async import (
    AspectRatio,
    BananaError,
    GenerationRequest,
    InvalidRequestError,
    Model,
    Resolution,
    Task,
    TaskStatus,
)
from banana_async.models import DEFAULT_MODEL, request_from, text_problem, url_problem

# --------------------------------------------------------------------------- enums


def test_model_values() -> None:
    assert {m.value for m in Model} == {
        "nano-banana",
        "nano-banana-fast",
        "nano-banana-pro",
        "nano-banana-pro-stable",
        "nano-banana-2",
        "nano-banana-2-stable",
    }


def test_resolution_values() -> None:
    assert [r.value for r in Resolution] == ["1k", "2k", "4k"]


def test_aspect_ratio_values_match_the_reference() -> None:
    documented = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "5:4", "4:5", "21:9"]
    assert sorted(a.value for a in AspectRatio) == sorted(documented)
    assert len(AspectRatio) == len(documented)


@pytest.mark.parametrize("cls", [Model, Resolution, AspectRatio, TaskStatus])
def test_enums_are_str_enums(cls: type[enum.StrEnum]) -> None:
    assert issubclass(cls, enum.StrEnum)
    for member in cls:
        assert isinstance(member, str)
        assert str(member) == member.value
        assert member == member.value
        assert f"{member}" == member.value


@pytest.mark.parametrize(
    ("member", "text"),
    [
        (Model.NANO_BANANA_2, "nano-banana-2"),
        (Resolution.R4K, "4k"),
        (AspectRatio.R16_9, "16:9"),
        (TaskStatus.COMPLETED, "completed"),
    ],
)
def test_str_enum_members_are_interchangeable_with_plain_strings(member: str, text: str) -> None:
    assert member == text
    assert hash(member) == hash(text)
    assert {text: "found"}[member] == "found"
    assert type(member)(text) is member


def test_default_model_is_listed_by_both_dialects() -> None:
    assert DEFAULT_MODEL is Model.NANO_BANANA_2


# --------------------------------------------------------------------------- GenerationRequest


def test_request_defaults() -> None:
    req = GenerationRequest("a cat")
    assert req.prompt == "a cat"
    assert req.model is Model.NANO_BANANA_2
    assert req.resolution is None
    assert req.size is None
    assert req.image_urls == ()


def test_request_is_frozen() -> None:
    req = GenerationRequest("a cat")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        req.prompt = "a dog"  # type: ignore[misc]


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  "])
def test_blank_prompt_rejected(prompt: str) -> None:
    with pytest.raises(InvalidRequestError, match="prompt"):
        GenerationRequest(prompt)


@pytest.mark.parametrize("prompt", [None, 42, b"a cat", ["a cat"]])
def test_non_string_prompt_rejected(prompt: Any) -> None:
    with pytest.raises(InvalidRequestError, match="prompt"):
        GenerationRequest(prompt)


def test_prompt_is_kept_verbatim() -> None:
    prompt = "  a cat\n on a windowsill, 猫 🍌  "
    assert GenerationRequest(prompt).prompt == prompt


def test_invalid_request_error_is_a_value_error_and_a_banana_error() -> None:
    assert issubclass(InvalidRequestError, ValueError)
    assert issubclass(InvalidRequestError, BananaError)
    with pytest.raises(ValueError, match="prompt"):
        GenerationRequest("")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("nano-banana-2", Model.NANO_BANANA_2),
        ("nano-banana", Model.NANO_BANANA),
        ("nano-banana-fast", Model.NANO_BANANA_FAST),
        ("  nano-banana-pro  ", Model.NANO_BANANA_PRO),
        (Model.NANO_BANANA_2_STABLE, Model.NANO_BANANA_2_STABLE),
    ],
)
def test_known_model_strings_become_members(given: str, expected: Model) -> None:
    model = GenerationRequest("a cat", model=given).model
    assert model is expected
    assert isinstance(model, Model)


@pytest.mark.parametrize("name", ["nano-banana-3", "Nano-Banana-2", "gpt-image-1"])
def test_unknown_model_string_kept_as_plain_str(name: str) -> None:
    model = GenerationRequest("a cat", model=name).model
    assert model == name
    assert type(model) is str


@pytest.mark.parametrize("model", ["", "   "])
def test_blank_model_rejected(model: str) -> None:
    with pytest.raises(InvalidRequestError, match="model"):
        GenerationRequest("a cat", model=model)


def test_non_string_model_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="model"):
        GenerationRequest("a cat", model=2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1k", Resolution.R1K),
        ("2K", Resolution.R2K),
        (" 4K ", Resolution.R4K),
        (Resolution.R2K, Resolution.R2K),
        (None, None),
    ],
)
def test_resolution_normalised(given: str | None, expected: Resolution | None) -> None:
    assert GenerationRequest("a cat", resolution=given).resolution is expected


@pytest.mark.parametrize("resolution", ["8k", "", "1080p", "2 k", 2, 2.0, ["2k"]])
def test_unknown_resolution_rejected(resolution: object) -> None:
    with pytest.raises(InvalidRequestError, match="resolution"):
        GenerationRequest("a cat", resolution=resolution)


@pytest.mark.parametrize("size", [a.value for a in AspectRatio])
def test_every_documented_size_accepted(size: str) -> None:
    assert GenerationRequest("a cat", size=size).size is AspectRatio(size)


@pytest.mark.parametrize("size", ["7:3", "16x9", "16/9", "", "1:1:1", 1.5, ("16", "9")])
def test_unknown_size_rejected(size: object) -> None:
    with pytest.raises(InvalidRequestError, match="size"):
        GenerationRequest("a cat", size=size)


def test_size_whitespace_is_stripped() -> None:
    assert GenerationRequest("a cat", size=" 16:9 ").size is AspectRatio.R16_9


def test_image_urls_list_becomes_a_tuple() -> None:
    urls = ["https://example.com/a.png", "http://example.com/b.jpg?x=1"]
    req = GenerationRequest("a cat", image_urls=urls)
    assert req.image_urls == tuple(urls)
    urls.append("https://example.com/c.png")  # the request keeps its own copy
    assert len(req.image_urls) == 2


def test_image_urls_from_any_iterable() -> None:
    def gen() -> Iterator[str]:
        yield "https://example.com/a.png"
        yield "HTTPS://EXAMPLE.COM/B.PNG"

    assert GenerationRequest("a cat", image_urls=gen()).image_urls == (
        "https://example.com/a.png",
        "HTTPS://EXAMPLE.COM/B.PNG",
    )


def test_image_urls_none_means_none() -> None:
    assert GenerationRequest("a cat", image_urls=None).image_urls == ()


@pytest.mark.parametrize("value", ["https://example.com/a.png", b"https://example.com/a.png"])
def test_a_single_string_is_not_a_list_of_urls(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="list"):
        GenerationRequest("a cat", image_urls=value)


def test_a_non_iterable_is_not_a_list_of_urls() -> None:
    with pytest.raises(InvalidRequestError, match="list"):
        GenerationRequest("a cat", image_urls=42)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///tmp/a.png",
        "/tmp/a.png",
        "a.png",
        "./images/a.png",
        "C:\\images\\a.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "https://",
        "http:///a.png",
        "",
        "//example.com/a.png",
        "javascript:alert(1)",
    ],
)
def test_non_http_urls_rejected(url: str) -> None:
    with pytest.raises(InvalidRequestError, match="URL"):
        GenerationRequest("a cat", image_urls=["https://example.com/ok.png", url])


def test_long_rejected_url_is_shortened_in_the_message() -> None:
    url = "data:image/png;base64," + "A" * 10_000
    with pytest.raises(InvalidRequestError) as info:
        GenerationRequest("a cat", image_urls=[url])
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("item", [None, 42, b"https://example.com/a.png", {"url": "https://x"}])
def test_non_string_url_items_rejected(item: object) -> None:
    with pytest.raises(InvalidRequestError, match="strings"):
        GenerationRequest("a cat", image_urls=["https://example.com/a.png", item])


def test_request_equality_after_normalisation() -> None:
    a = GenerationRequest("a cat", model="nano-banana-pro", resolution="2K", size="16:9")
    b = GenerationRequest(
        "a cat", model=Model.NANO_BANANA_PRO, resolution=Resolution.R2K, size=AspectRatio.R16_9
    )
    assert a == b
    assert hash(a) == hash(b)


# --------------------------------------------------------------------------- request_from


def test_request_from_prompt_and_fields() -> None:
    req = request_from("a cat", model="nano-banana-pro", resolution="4k", size="1:1")
    assert req == GenerationRequest(
        "a cat", model=Model.NANO_BANANA_PRO, resolution="4k", size="1:1"
    )


def test_request_from_ignores_none_fields() -> None:
    assert request_from("a cat", model=None, resolution=None, size=None, image_urls=None) == (
        GenerationRequest("a cat")
    )


def test_request_from_passes_a_request_through() -> None:
    req = GenerationRequest("a cat", size="16:9")
    assert request_from(req) is req
    assert request_from(req, model=None, size=None) is req


def test_request_from_rejects_a_request_plus_fields() -> None:
    req = GenerationRequest("a cat")
    with pytest.raises(InvalidRequestError, match="size"):
        request_from(req, size="16:9")
    with pytest.raises(InvalidRequestError, match="model"):
        request_from(req, model="nano-banana-pro")


def test_request_from_validates_the_fields() -> None:
    with pytest.raises(InvalidRequestError, match="resolution"):
        request_from("a cat", resolution="16k")
    with pytest.raises(InvalidRequestError, match="prompt"):
        request_from("   ")


def test_request_from_rejects_unknown_field_names() -> None:
    with pytest.raises(TypeError):
        request_from("a cat", quality="high")


# --------------------------------------------------------------------------- Task and TaskStatus


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (TaskStatus.QUEUED, False),
        (TaskStatus.PROCESSING, False),
        (TaskStatus.COMPLETED, True),
        (TaskStatus.FAILED, True),
        (TaskStatus.UNKNOWN, False),
    ],
)
def test_task_status_terminal(status: TaskStatus, terminal: bool) -> None:
    assert status.terminal is terminal


def test_task_status_values() -> None:
    assert [s.value for s in TaskStatus] == [
        "queued",
        "processing",
        "completed",
        "failed",
        "unknown",
    ]


@pytest.mark.parametrize(
    ("status", "done", "ok"),
    [
        (TaskStatus.QUEUED, False, False),
        (TaskStatus.PROCESSING, False, False),
        (TaskStatus.COMPLETED, True, True),
        (TaskStatus.FAILED, True, False),
        (TaskStatus.UNKNOWN, False, False),
    ],
)
def test_task_done_and_ok(status: TaskStatus, done: bool, ok: bool) -> None:
    task = Task(id="abc", status=status, raw_status=status.value)
    assert task.done is done
    assert task.ok is ok


def test_task_defaults_and_frozen() -> None:
    task = Task(id="abc", status=TaskStatus.QUEUED)
    assert task.raw_status == ""
    assert task.created is None
    assert task.model is None
    assert task.object is None
    assert task.image_url is None
    assert task.error is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.status = TaskStatus.COMPLETED  # type: ignore[misc]


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("Completed", TaskStatus.COMPLETED),
        ("SUCCESS", TaskStatus.COMPLETED),
        (" done ", TaskStatus.COMPLETED),
        ("Cancelled", TaskStatus.FAILED),
        ("in-progress", TaskStatus.PROCESSING),
        ("IN_QUEUE", TaskStatus.QUEUED),
        ("in queue", TaskStatus.QUEUED),
        ("baking", TaskStatus.UNKNOWN),
        ("", TaskStatus.UNKNOWN),
        ("unknown", TaskStatus.UNKNOWN),
    ],
)
def test_task_status_from_word(word: str, status: TaskStatus) -> None:
    assert TaskStatus.from_word(word) is status


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/x.png",  # an unclosed IPv6 bracket
        "http://" + "a" * 300 + "/x.png",  # a host no DNS can hold
        "http://" + "a" * 64 + ".com/x.png",  # a label over 63 characters
        "http://a..b/x.png",  # an empty label
        "http://exa mple.com/x.png",
        "http://h:99999/x.png",
        "http://example.com/x\n.png",
        "http://example.com/\ud800.png",
        "ftp://example.com/x.png",
        "http:///x.png",
        "not a url",
    ],
)
def test_url_problem_refuses_what_the_http_stack_would_choke_on(url: str) -> None:
    assert url_problem(url) is not None
    with pytest.raises(InvalidRequestError, match="reference image"):
        GenerationRequest("a cat", image_urls=[url])


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example.com/a/b.png?sig=abc&exp=1",
        "http://127.0.0.1:8080/images/x.png",
        "http://[::1]:8080/x.png",
        "https://café.example/x.png",
        "https://my_bucket.s3.amazonaws.com/x.png",
    ],
)
def test_url_problem_accepts_usable_urls(url: str) -> None:
    assert url_problem(url) is None


def test_url_problem_of_non_strings() -> None:
    assert url_problem(None) == "is a NoneType, not a string"
    assert url_problem({"url": "x"}) is not None


@pytest.mark.parametrize("field", ["prompt", "model"])
def test_lone_surrogates_are_refused_before_anything_is_sent(field: str) -> None:
    kwargs: dict[str, str] = {"prompt": "a cat"}
    kwargs[field] = "bad \ud800"
    with pytest.raises(InvalidRequestError, match="lone surrogate") as caught:
        GenerationRequest(**kwargs)
    str(caught.value).encode("utf-8")  # the message itself is printable anywhere
    assert text_problem("fine ✓") is None
