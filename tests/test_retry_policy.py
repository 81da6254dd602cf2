"""Retry and poll decisions: pure functions, checked without sleeping."""

from __future__ import annotations

import email.utils
import itertools
import math
import random

import pytest
from multidict import CIMultiDict

from banana_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BananaError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
)
from banana_async._polling import (
    DEFAULT_POLL_INTERVAL,
    POLL_JITTER,
    WAKE_GRID,
    check_interval,
    check_timeout,
    poll_delay,
    wake_delay,
)
from banana_async._retry import (
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    is_transient,
    parse_retry_after,
    requested_delay,
    retry_after_from_headers,
    retry_delay,
    should_retry_create,
    should_retry_query,
)

NOW = 1_761_635_478.0


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


# --------------------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 7 ", 7.0),
        ("120", 120.0),
        ("1.5", 1.5),
        ("0.25", 0.25),
        ("-5", 0.0),
        ("-0.5", 0.0),
        ("3600", 3600.0),  # uncapped here; the cap applies when the delay is chosen
    ],
)
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after(http_date(NOW + 90), now=NOW) == pytest.approx(90.0)


def test_parse_retry_after_http_date_in_the_past() -> None:
    assert parse_retry_after(http_date(NOW - 3600), now=NOW) == 0.0


def test_parse_retry_after_http_date_uses_the_given_now() -> None:
    value = http_date(NOW + 30)
    assert parse_retry_after(value, now=NOW - 10) == pytest.approx(40.0)
    assert parse_retry_after(value, now=NOW + 30) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "value",
    ["", "soon", "tomorrow at noon", "7 seconds", "nan", "NaN", "Mon, 99 Foo 2025", "0x10"],
)
def test_parse_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_parse_retry_after_none_is_none() -> None:
    assert parse_retry_after(None, now=NOW) is None


def test_retry_after_from_headers_is_case_insensitive() -> None:
    assert retry_after_from_headers(CIMultiDict({"retry-after": "3"}), now=NOW) == 3.0
    assert retry_after_from_headers({"Retry-After": "4"}, now=NOW) == 4.0
    assert retry_after_from_headers({}, now=NOW) is None


# --------------------------------------------------------------------------- truth tables


def status_error(status: int) -> APIStatusError:
    return APIStatusError(f"HTTP {status}", status_code=status)


ERRORS: dict[str, BananaError] = {
    "connection-not-sent": APIConnectionError("refused", request_sent=False),
    "connection-sent": APIConnectionError("reset", request_sent=True),
    "connection-default": APIConnectionError("reset"),
    "timeout-not-sent": APITimeoutError("connect timeout", request_sent=False),
    "timeout-sent": APITimeoutError("read timeout", request_sent=True),
    "rate-limit": RateLimitError("429", status_code=429),
    "rate-limit-retry-after": RateLimitError("429", status_code=429, retry_after=5.0),
    "server-500": ServerError("500", status_code=500),
    "server-502": ServerError("502", status_code=502),
    "server-503": ServerError("503", status_code=503),
    "status-408": status_error(408),
    "status-418": status_error(418),
    "status-302": status_error(302),
    "bad-request-400": BadRequestError("400", status_code=400),
    "bad-request-422": BadRequestError("422", status_code=422),
    "auth-401": AuthenticationError("401", status_code=401),
    "auth-403": AuthenticationError("403", status_code=403),
    "not-found": NotFoundError("404", status_code=404),
    "provider": ProviderError("code 204", code="204", msg="login verification failed"),
    "validation": ResponseValidationError("not a task", body="<html>"),
    "invalid-request": InvalidRequestError("bad prompt"),
}

# name: (should_retry_query, should_retry_create, is_transient)
TRUTH: dict[str, tuple[bool, bool, bool]] = {
    "connection-not-sent": (True, True, True),
    "connection-sent": (True, False, True),
    "connection-default": (True, False, True),
    "timeout-not-sent": (True, True, True),
    "timeout-sent": (True, False, True),
    "rate-limit": (True, True, True),
    "rate-limit-retry-after": (True, True, True),
    "server-500": (True, False, True),
    "server-502": (True, False, True),
    "server-503": (True, False, True),
    "status-408": (True, False, True),
    "status-418": (False, False, False),
    "status-302": (False, False, False),
    "bad-request-400": (False, False, False),
    "bad-request-422": (False, False, False),
    "auth-401": (False, False, False),
    "auth-403": (False, False, False),
    "not-found": (False, False, False),
    "provider": (False, False, False),
    "validation": (False, False, True),
    "invalid-request": (False, False, False),
}


def test_truth_table_covers_every_error() -> None:
    assert set(TRUTH) == set(ERRORS)


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_should_retry_query(name: str) -> None:
    assert should_retry_query(ERRORS[name]) is TRUTH[name][0]


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_should_retry_create(name: str) -> None:
    assert should_retry_create(ERRORS[name]) is TRUTH[name][1]


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_is_transient(name: str) -> None:
    assert is_transient(ERRORS[name]) is TRUTH[name][2]


def test_a_create_is_never_retried_where_a_query_is_not() -> None:
    for name, error in ERRORS.items():
        if should_retry_create(error):
            assert should_retry_query(error), name


def test_connection_error_defaults_to_request_sent() -> None:
    # The safe default: a create whose fate is unknown is not re-sent.
    assert APIConnectionError("x").request_sent is True
    assert APITimeoutError("x").request_sent is True


# --------------------------------------------------------------------------- retry_delay


def test_requested_delay() -> None:
    assert requested_delay(RateLimitError("429", status_code=429, retry_after=5.0)) == 5.0
    assert requested_delay(RateLimitError("429", status_code=429)) is None
    assert requested_delay(ServerError("503", status_code=503, retry_after=1e9)) == MAX_RETRY_AFTER
    assert requested_delay(APIConnectionError("x")) is None


@pytest.mark.parametrize("attempt", [1, 2, 5, 50])
def test_retry_delay_honours_retry_after_without_jitter(attempt: int) -> None:
    error = RateLimitError("429", status_code=429, retry_after=12.5)
    rng = random.Random(1)
    assert retry_delay(attempt, error, rng=rng) == 12.5
    assert retry_delay(attempt, error) == 12.5  # no jitter with the global generator either


@pytest.mark.parametrize("asked", [MAX_RETRY_AFTER + 0.001, 3600.0, 86_400.0 * 365, math.inf])
def test_retry_delay_caps_retry_after(asked: float) -> None:
    error = RateLimitError("429", status_code=429, retry_after=asked)
    assert retry_delay(1, error, rng=random.Random(0)) == MAX_RETRY_AFTER


def test_retry_delay_zero_retry_after_means_now() -> None:
    error = ServerError("503", status_code=503, retry_after=0.0)
    assert retry_delay(3, error, rng=random.Random(0)) == 0.0


def ceiling(attempt: int) -> float:
    return min(INITIAL_RETRY_DELAY * 2.0 ** (max(1, attempt) - 1), MAX_RETRY_DELAY)


def test_ceiling_model_matches_constants() -> None:
    assert ceiling(1) == INITIAL_RETRY_DELAY
    assert ceiling(2) == 2 * INITIAL_RETRY_DELAY
    assert ceiling(100) == MAX_RETRY_DELAY


@pytest.mark.parametrize(
    "error",
    [
        ServerError("500", status_code=500),
        APIConnectionError("reset"),
        RateLimitError("429", status_code=429),
    ],
    ids=["server", "connection", "rate-limit-no-header"],
)
def test_retry_delay_full_jitter_within_the_growing_ceiling(error: BananaError) -> None:
    rng = random.Random(20251028)
    for attempt in [0, *range(1, 13), 40, 200]:
        top = ceiling(attempt)
        delays = [retry_delay(attempt, error, rng=rng) for _ in range(400)]
        assert all(0.0 <= d <= top for d in delays), attempt
        # Full jitter: the draws spread over the whole range, not bunched at one end.
        assert min(delays) < 0.1 * top
        assert max(delays) > 0.9 * top


def test_retry_delay_ceiling_grows_then_caps() -> None:
    rng = random.Random(7)
    error = ServerError("503", status_code=503)
    maxima = [max(retry_delay(a, error, rng=rng) for _ in range(500)) for a in range(1, 10)]
    for low, high in itertools.pairwise(maxima[:5]):
        assert high > low  # still growing over the first attempts
    assert all(m <= MAX_RETRY_DELAY for m in maxima)
    assert maxima[-1] > 0.9 * MAX_RETRY_DELAY  # reached the cap


def test_retry_delay_is_reproducible_with_a_seeded_rng() -> None:
    error = ServerError("500", status_code=500)
    first = [retry_delay(a, error, rng=random.Random(42)) for a in range(1, 8)]
    second = [retry_delay(a, error, rng=random.Random(42)) for a in range(1, 8)]
    assert first == second


def test_retry_delay_without_rng_stays_in_bounds() -> None:
    error = APIConnectionError("reset")
    for attempt in range(1, 10):
        assert 0.0 <= retry_delay(attempt, error) <= ceiling(attempt)


# --------------------------------------------------------------------------- poll timing


@pytest.mark.parametrize("interval", [DEFAULT_POLL_INTERVAL, 0.01, 2.0, 5.0, 30.0])
def test_poll_delay_bounds(interval: float) -> None:
    rng = random.Random(99)
    delays = [poll_delay(interval, rng=rng) for _ in range(2000)]
    # Drawn one wake-grid step short of the full jitter, which rounding restores.
    drawn = POLL_JITTER - WAKE_GRID
    assert all(interval <= d <= interval * (1 + drawn) for d in delays)
    assert max(delays) > interval * (1 + 0.9 * drawn)  # the jitter is really used
    assert min(delays) < interval * (1 + 0.1 * drawn)


@pytest.mark.parametrize("interval", [0.001, 0.05, 2.0, 30.0])
def test_wake_delays_land_on_a_shared_grid_within_the_jitter(interval: float) -> None:
    rng = random.Random(7)
    step = interval * WAKE_GRID
    wakes = set()
    for _ in range(2000):
        now = rng.uniform(0, 10_000)
        delay = poll_delay(interval, rng=rng)
        rounded = wake_delay(now, delay, interval)
        assert delay <= rounded < delay + step + 1e-9
        assert interval <= rounded <= interval * (1 + POLL_JITTER) + 1e-9
        ticks = (now + rounded) / step
        assert abs(ticks - round(ticks)) < 1e-6  # on the grid
        wakes.add(round(ticks))
    # Pollers started at one moment share a handful of wake-up times.
    same_start = {
        round((500.0 + wake_delay(500.0, poll_delay(interval, rng=rng), interval)) / step)
        for _ in range(1000)
    }
    assert len(same_start) <= int(POLL_JITTER / WAKE_GRID) + 1


def test_poll_delay_without_rng_stays_in_bounds() -> None:
    for _ in range(200):
        assert 2.0 <= poll_delay(2.0) <= 2.0 * (1 + POLL_JITTER)


def test_default_poll_interval_is_within_the_providers_ask() -> None:
    assert 2.0 <= DEFAULT_POLL_INTERVAL <= 5.0
    assert 0.0 < POLL_JITTER < 1.0


@pytest.mark.parametrize("value", [1, 2.5, 0.001, 86_400])
def test_check_interval_accepts_positive_numbers(value: float) -> None:
    result = check_interval(value)
    assert result == value
    assert type(result) is float


@pytest.mark.parametrize(
    "value", [0, 0.0, -1, -0.5, True, False, math.nan, math.inf, -math.inf, "2", None]
)
def test_check_interval_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        check_interval(value)  # type: ignore[arg-type]


def test_check_interval_names_the_option() -> None:
    with pytest.raises(ValueError, match="my_interval"):
        check_interval(0, "my_interval")


@pytest.mark.parametrize("value", [1, 600, 0.5, 1e9])
def test_check_timeout_accepts_positive_numbers(value: float) -> None:
    result = check_timeout(value)
    assert result == value
    assert type(result) is float


def test_check_timeout_none_and_infinity_mean_no_deadline() -> None:
    assert check_timeout(None) is None
    assert check_timeout(math.inf) is None


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, True, False, math.nan, -math.inf, "60"])
def test_check_timeout_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        check_timeout(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "retried"), [(499, False), (500, True), (599, True), (600, False)]
)
def test_query_retries_stop_at_the_edges_of_the_5xx_range(status: int, retried: bool) -> None:
    # Found by mutation testing: 599 is still a server error, 600 is no HTTP status.
    assert should_retry_query(APIStatusError(str(status), status_code=status)) is retried
