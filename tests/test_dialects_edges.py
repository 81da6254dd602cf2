"""Edges of how the dialects read answers, found by mutation testing.

Each test pins what an error says and carries when the provider's answer is
unreadable or reports an error in a ``code``/``msg`` body: details the rest
of the suite went through without checking, so that a mutant breaking them
survived (see "Would the tests notice?" in docs/reliability.md). The
dialects are pure functions of bytes, so these are recorded answers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from banana_async import (
    APIStatusError,
    BadRequestError,
    ProviderError,
    ResponseValidationError,
    ServerError,
    TaskStatus,
)
from banana_async.dialects import NANO, HTTPResponse, error_for_status, parse_body


def _json(data: Any, status: int = 200) -> HTTPResponse:
    return HTTPResponse(status, {"Content-Type": "application/json"}, json.dumps(data).encode())


def _refusal(body: bytes) -> str:
    """The message of the error a 200 answer with ``body`` raises as a task."""
    with pytest.raises(ResponseValidationError) as info:
        NANO.parse_task(HTTPResponse(200, {}, body))
    return str(info.value)


def _provider_error(data: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        parse_body(_json(data))
    return info.value


@pytest.mark.parametrize("body", [b"", b"  \r\n"])
def test_an_empty_body_says_so_with_its_status(body: bytes) -> None:
    with pytest.raises(ResponseValidationError) as info:
        NANO.parse_task(HTTPResponse(202, {}, body))
    assert str(info.value) == "the provider sent an empty body (HTTP 202)"
    assert info.value.body == ""
    assert info.value.status_code == 202


def test_an_html_page_in_a_2xx_answer_keeps_its_text_and_status() -> None:
    page = b"<!DOCTYPE html><html><head><title>Bad  Gateway</title></head></html>"
    with pytest.raises(ResponseValidationError) as info:
        NANO.parse_create(HTTPResponse(201, {}, page))
    assert "the provider sent HTML page 'Bad Gateway' instead of JSON" in str(info.value)
    assert info.value.body == page.decode()
    assert info.value.status_code == 201


def test_a_body_that_is_not_json_keeps_its_text_and_status() -> None:
    with pytest.raises(ResponseValidationError) as info:
        NANO.parse_task(HTTPResponse(203, {}, b"upstream   says no"))
    assert "the provider's response is not JSON: upstream says no" in str(info.value)
    assert info.value.body == "upstream   says no"
    assert info.value.status_code == 203


def test_an_error_code_is_named_with_its_message() -> None:
    error = _provider_error({"code": 500, "msg": "busy"})
    assert str(error) == "the provider reported an error (code 500): busy"
    assert (error.code, error.msg, error.task_id) == ("500", "busy", None)


def test_a_missing_code_or_message_reads_as_a_question_mark() -> None:
    error = _provider_error({"msg": "no code given"})
    assert str(error) == "the provider reported an error (code ?): no code given"
    assert (error.code, error.msg) == ("", "no code given")
    error = _provider_error({"code": 7, "msg": None})
    assert str(error) == "the provider reported an error (code 7): ?"
    assert (error.code, error.msg) == ("7", "")
    error = _provider_error({"code": 7, "msg": ""})
    assert str(error).endswith("(code 7): ?")


def test_a_message_that_is_not_text_is_kept_as_text() -> None:
    error = _provider_error({"code": 9, "msg": 12})
    assert error.msg == "12"
    assert str(error).endswith("(code 9): 12")


def test_an_error_about_a_task_names_it() -> None:
    error = _provider_error({"code": 5, "msg": "quota", "id": "t-1"})
    assert str(error) == "the provider reported an error about task 't-1' (code 5): quota"
    assert error.task_id == "t-1"


def test_a_blank_id_beside_an_error_is_no_task_id() -> None:
    error = _provider_error({"code": 5, "msg": "quota", "id": "   "})
    assert error.task_id is None
    assert "about task" not in str(error)


@pytest.mark.parametrize("code", [[0], {"ok": True}, "nope"])
def test_a_code_of_no_known_kind_is_an_error(code: object) -> None:
    error = _provider_error({"code": code, "msg": "x"})
    assert error.msg == "x"


def test_a_completed_task_with_an_unusable_image_url_names_the_url_cut_short() -> None:
    url = "ftp://images.example/" + "a" * 200
    task = NANO.parse_task(_json({"id": "t-2", "status": "completed", "image_url": url}))
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    shown = ascii(url[:79] + "\u2026")  # 80 characters, the cut one included
    assert f"the task image URL {shown} " in task.error


@pytest.mark.parametrize(
    ("status", "kind", "what"),
    [
        (599, ServerError, "error"),
        (400, BadRequestError, "error"),
        (399, APIStatusError, "unexpected status"),
        (600, APIStatusError, "error"),
        (418, APIStatusError, "error"),
        (304, APIStatusError, "unexpected status"),
    ],
)
def test_a_status_is_named_for_what_it_is(status: int, kind: type[Exception], what: str) -> None:
    error = error_for_status(HTTPResponse(status, {}, b"{}"))
    assert type(error) is kind
    assert str(error) == f"HTTP {status} {what} from the provider: {{}}"  # no redirect named


def test_a_redirect_names_where_it_went_and_that_it_was_not_followed() -> None:
    error = error_for_status(HTTPResponse(302, {"location": "https://elsewhere.example/"}, b""))
    assert str(error) == (
        "HTTP 302 unexpected status from the provider: empty body"
        " (redirect to https://elsewhere.example/; redirects are not followed)"
    )


@pytest.mark.parametrize(
    "page",
    [
        b"\r\n  <html><head><title>Oops</title></head></html>",  # blanks before it
        b"<!DOCTYPE HTML><title>Oops</title>",  # no <html> tag at all
        b"<?xml version='1.0'?><html><title>Oops</title></html>",  # another start
        b"<!--" + b"x" * 503 + b"<html><title>Oops</title></html>",  # <html within 512 bytes
        b"<head><title>Oops</title></head>",  # a fragment
        b"<BODY><title>Oops</title></BODY>",
    ],
)
def test_an_html_page_is_told_from_other_text(page: bytes) -> None:
    assert _refusal(page).startswith("the provider sent HTML page 'Oops' instead of JSON")


def test_only_the_first_512_bytes_are_looked_at_for_html() -> None:
    page = b"<!--" + b"x" * 504 + b"<html><title>Oops</title></html>"  # <html ends at 513
    assert _refusal(page).startswith("the provider's response is not JSON: <!--xxx")


def test_a_page_without_a_title_is_an_html_page() -> None:
    assert _refusal(b"<html><body>busy</body></html>").startswith(
        "the provider sent an HTML page instead of JSON"
    )


def test_only_the_first_8_kib_are_searched_for_a_title() -> None:
    head = b"<html><!--"
    title = b"<title>Oops</title>"
    inside = head + b"x" * (8192 - len(head) - len(title)) + title  # ends at byte 8192
    outside = head + b"x" * (8193 - len(head) - len(title)) + title  # one byte later
    assert "HTML page 'Oops'" in _refusal(inside)
    assert _refusal(outside).startswith("the provider sent an HTML page instead of JSON")


def test_other_markup_is_not_taken_for_an_html_page() -> None:
    assert _refusal(b"<error>busy</error>") == (
        "the provider's response is not JSON: <error>busy</error> (HTTP 200)"
    )


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"error": "bad prompt"}, "bad prompt"),
        ({"message": "bad prompt"}, "bad prompt"),
        ({"msg": "bad prompt"}, "bad prompt"),
        ({"detail": "bad prompt"}, "bad prompt"),
        ({"error": {"message": "nested"}}, "nested"),
        ({"error": {"msg": "nested msg"}}, "nested msg"),
        ({"error": {"message": "first", "msg": "second"}}, "first"),
        ({"detail": "d", "msg": "m", "message": "x", "error": "e"}, "e"),
        ({"detail": "d", "msg": "m", "message": "x"}, "x"),
        ({"detail": "d", "msg": "m"}, "m"),
        ({"error": 5, "message": "  spaced   out \n text "}, "spaced out text"),
        ({"error": "   ", "msg": "real"}, "real"),
        ({"code": 3}, '{"code": 3}'),
    ],
)
def test_an_error_body_is_read_for_its_message(data: Any, said: str) -> None:
    error = error_for_status(_json(data, 400))
    assert str(error) == f"HTTP 400 error from the provider: {said}"


def test_a_long_message_or_title_is_cut_to_200_characters() -> None:
    error = error_for_status(_json({"error": "m" * 300}, 400))
    assert str(error) == "HTTP 400 error from the provider: " + "m" * 199 + "\u2026"
    page = b"<html><title>" + b"t" * 300 + b"</title></html>"
    error = error_for_status(HTTPResponse(502, {}, page))
    assert str(error) == "HTTP 502 error from the provider: HTML page '" + "t" * 199 + "\u2026'"


def test_a_long_body_that_is_not_json_is_cut_to_200_characters() -> None:
    error = error_for_status(HTTPResponse(500, {}, b"x" * 300))
    assert str(error) == "HTTP 500 error from the provider: " + "x" * 199 + "\u2026"


@pytest.mark.parametrize("blank", ["\u00a0", "\x1c\u2003"])
def test_a_body_of_blanks_that_bytes_do_not_strip_is_an_empty_body(blank: str) -> None:
    error = error_for_status(HTTPResponse(500, {}, blank.encode()))
    assert str(error) == "HTTP 500 error from the provider: empty body"


def test_a_queried_task_without_a_status_is_refused_with_its_status_code() -> None:
    with pytest.raises(ResponseValidationError) as info:
        NANO.parse_task(_json({"id": "t-3"}, 202), task_id="t-3")
    assert str(info.value) == "the provider's response has no status (HTTP 202)"
    assert info.value.status_code == 202
    assert info.value.body == '{"id": "t-3"}'


def test_an_answer_about_another_task_keeps_its_body_and_status() -> None:
    with pytest.raises(ResponseValidationError) as info:
        NANO.parse_task(_json({"id": "t-9", "status": "queued"}, 203), task_id="t-3")
    assert str(info.value) == (
        "the provider answered a query for task 't-3' with task 't-9' (HTTP 203)"
    )
    assert info.value.status_code == 203
    assert info.value.body == '{"id": "t-9", "status": "queued"}'


def test_a_query_asks_for_json_and_escapes_only_an_id_of_dots() -> None:
    request = NANO.query_request("X.")
    assert request.url.endswith("/v1/result/X.")
    assert dict(request.headers) == {"Accept": "application/json"}
    assert NANO.query_request("..").url.endswith("/v1/result/%2E%2E")


_EMOJI = "\U0001f600"  # 4 bytes in UTF-8, the most a character takes


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        # Longer than the limit by one 1-byte character after 4096 emoji: the
        # first 4096 characters are exactly 4 x 4096 bytes, so the cut is only
        # seen in the bytes past them.
        (_EMOJI * 4096 + "x", _EMOJI * 4095 + "\u2026"),
        (_EMOJI * 5000, _EMOJI * 4095 + "\u2026"),
        # The bytes read end inside an emoji: the half character is cut off,
        # not shown as a replacement character.
        ("a" + _EMOJI * 5000, "a" + _EMOJI * 4094 + "\u2026"),
        ("ab" + _EMOJI * 4095 + "\u00e9", "ab" + _EMOJI * 4093 + "\u2026"),
        # Exactly at the limit: kept whole, no cut mark.
        (_EMOJI * 4096, _EMOJI * 4096),
        (_EMOJI * 4095 + "\u00e9", _EMOJI * 4095 + "\u00e9"),
        ("x" * 4096, "x" * 4096),
        ("x" * 4097, "x" * 4095 + "\u2026"),
    ],
    ids=[
        "emoji-then-one-more",
        "long-emoji",
        "cut-inside-an-emoji",
        "cut-inside-a-2-byte-char",
        "emoji-at-the-limit",
        "mixed-at-the-limit",
        "ascii-at-the-limit",
        "ascii-one-past",
    ],
)
def test_a_kept_body_shows_the_cut_whatever_its_characters(body: str, kept: str) -> None:
    error = error_for_status(HTTPResponse(502, {}, body.encode()))
    assert error.body == kept
    assert len(error.body) <= 4096


def test_a_message_quoting_a_long_emoji_body_shows_the_cut() -> None:
    # The message quotes 200 characters of a body that is not JSON.
    error = error_for_status(HTTPResponse(502, {}, (_EMOJI * 201).encode()))
    assert str(error) == f"HTTP 502 error from the provider: {_EMOJI * 199}\u2026"
    error = error_for_status(HTTPResponse(502, {}, (_EMOJI * 200).encode()))
    assert str(error) == f"HTTP 502 error from the provider: {_EMOJI * 200}"
