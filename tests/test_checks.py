"""The checks written once and shared: each answers the same wherever it is used."""

from __future__ import annotations

import math

import pytest

from banana_async._checks import count_problem, error_message, error_text, split_http_url
from banana_async.cli.output import one_line
from banana_async.testing import FakeClock, Fault, TaskScript


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://host/x", "is not an http(s) URL"),
        ("https:///x", "has no host"),
        ("http://host:99999/", "cannot be parsed"),
        ("http://[::1/", "cannot be parsed"),
    ],
)
def test_split_http_url_says_why_not(url: str, reason: str) -> None:
    problem = split_http_url(url)
    assert isinstance(problem, str)
    assert problem.startswith(reason)


def test_split_http_url_gives_the_parts() -> None:
    parts = split_http_url("HTTPS://Example.com:8443/v1?q=1")
    assert not isinstance(parts, str)
    assert (parts.hostname, parts.port, parts.path) == ("example.com", 8443, "/v1")


@pytest.mark.parametrize(
    ("value", "minimum", "problem"),
    [
        (1, 1, None),
        (0, 0, None),
        (0, 1, "n must be a positive integer, not 0"),
        (-1, 0, "n must be a non-negative integer, not -1"),
        (1, 2, "n must be an integer of at least 2, not 1"),
        (True, 1, "n must be a positive integer, not True"),
        (1.0, 1, "n must be a positive integer, not 1.0"),
    ],
)
def test_count_problem(value: object, minimum: int, problem: str | None) -> None:
    assert count_problem(value, "n", minimum=minimum) == problem


def test_error_text_names_the_type() -> None:
    assert error_text(KeyError("x")) == "KeyError: 'x'"


def test_error_message_is_the_message_or_the_class_name() -> None:
    assert error_message(ValueError("bad\n  input")) == "bad\n  input"
    assert error_message(ValueError("bad\n  input"), one_line=True) == "bad input"
    assert error_message(TimeoutError()) == "TimeoutError"
    assert error_message(ValueError(" \n"), one_line=True) == "ValueError"


def test_the_cli_shows_an_error_as_the_shared_check_does() -> None:
    error = RuntimeError("line one\nline two")
    assert one_line(error) == error_message(error, one_line=True) == "line one line two"


@pytest.mark.parametrize("seconds", [-0.5, math.nan])
async def test_the_fake_clock_refuses_a_negative_or_nan_sleep(seconds: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match=r"seconds must be >= 0"):
        await clock.sleep(seconds)
    assert clock.sleeps == []
    await clock.sleep(0)
    assert clock.sleeps == [0]


def test_the_fakes_refuse_negative_numbers_in_the_same_words() -> None:
    with pytest.raises(ValueError, match=r"^expanded_bytes must be >= 0, got -1$"):
        Fault.gzip_bomb(-1)
    with pytest.raises(ValueError, match=r"^seconds must be >= 0, got -1$"):
        Fault.stall(-1)
    with pytest.raises(ValueError, match=r"^duration must be >= 0, got nan$"):
        TaskScript(duration=math.nan)
