"""``RequestBudget``: the fake provider's per-key rate limit, over real loopback HTTP.

The server runs on a :class:`FakeClock` that only moves when a test moves it,
so refills are exact and nothing waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, FakeClock, Fault, RequestBudget, TaskScript

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY: dict[str, Any] = {"model": "nano-banana-2", "prompt": "a cat"}


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[FakeBananaServer]:
    # No api_key: any Authorization is accepted, so keys can be told apart
    # by their buckets alone. Tasks run 10 s, so images exist only when a
    # test moves the clock.
    async with FakeBananaServer(duration=10.0, clock=clock.time) as srv:
        yield srv


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as sess:
        yield sess


class Answer:
    """What one request got back."""

    def __init__(self, status: int, headers: dict[str, str], body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("Retry-After")


async def _answer(resp: aiohttp.ClientResponse) -> Answer:
    body = await resp.json() if resp.content_type == "application/json" else await resp.read()
    return Answer(resp.status, dict(resp.headers), body)


async def create(
    session: aiohttp.ClientSession, server: FakeBananaServer, headers: dict[str, str] | None = None
) -> Answer:
    async with session.post(f"{server.url}/v1/banana/images", json=BODY, headers=headers) as resp:
        return await _answer(resp)


async def query(session: aiohttp.ClientSession, server: FakeBananaServer, task_id: str) -> Answer:
    async with session.get(f"{server.url}/v1/result/{task_id}") as resp:
        return await _answer(resp)


async def statuses(session: aiohttp.ClientSession, server: FakeBananaServer, n: int) -> list[int]:
    return [(await create(session, server)).status for _ in range(n)]


# -- the bucket ---------------------------------------------------------------------------


async def test_a_full_burst_then_429_with_retry_after(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.budget = RequestBudget(rate=0.25, burst=3)
    assert await statuses(session, server, 3) == [200, 200, 200]
    refused = await create(session, server)
    assert refused.status == 429
    # An empty bucket refills one token in 1 / 0.25 = 4 s.
    assert refused.retry_after == "4"
    assert refused.body == {
        "error": {"message": "too many requests: rate limit exceeded", "type": "rate_limit_error"}
    }


async def test_retry_after_counts_whole_seconds_to_the_next_token(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=0.25, burst=1)
    assert (await create(session, server)).status == 200
    clock.now += 1.0  # 0.25 token: 3 s to go
    assert (await create(session, server)).retry_after == "3"
    clock.now += 0.5  # 0.375 token: 2.5 s to go, rounded up
    assert (await create(session, server)).retry_after == "3"
    clock.now += 2.0  # 0.875 token: 0.5 s to go, and never less than 1
    assert (await create(session, server)).retry_after == "1"
    clock.now += 0.5  # exactly one token
    assert (await create(session, server)).status == 200


async def test_no_retry_after_when_the_budget_says_so(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.budget = RequestBudget(rate=1, burst=1, retry_after=False)
    assert (await create(session, server)).status == 200
    refused = await create(session, server)
    assert refused.status == 429
    assert refused.retry_after is None
    assert refused.body["error"]["type"] == "rate_limit_error"


async def test_the_bucket_refills_at_the_rate_up_to_the_burst(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=4, burst=2)
    assert await statuses(session, server, 3) == [200, 200, 429]
    clock.now += 0.25  # one token at 4/s
    assert await statuses(session, server, 2) == [200, 429]
    clock.now += 3600.0  # a quiet hour refills no more than the burst
    assert await statuses(session, server, 3) == [200, 200, 429]


async def test_the_default_burst_is_the_rate_and_at_least_one(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    assert RequestBudget(rate=20).capacity == 20
    assert RequestBudget(rate=0.5).capacity == 1
    assert RequestBudget(rate=0.5, burst=4).capacity == 4
    server.budget = RequestBudget(rate=3)
    assert await statuses(session, server, 4) == [200, 200, 200, 429]


async def test_status_queries_take_tokens_too(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=1, burst=2)
    task_id = (await create(session, server)).body["id"]
    assert (await query(session, server, task_id)).status == 200
    refused = await query(session, server, task_id)
    assert (refused.status, refused.retry_after) == (429, "1")
    assert server.tasks[task_id].queries == 1  # the refused query was not answered
    clock.now += 1.0
    assert (await query(session, server, task_id)).body["status"] == "processing"


async def test_each_key_has_its_own_bucket(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.budget = RequestBudget(rate=1, burst=2)
    other = {"Authorization": "Bearer sk-other"}
    assert await statuses(session, server, 3) == [200, 200, 429]
    assert [(await create(session, server, other)).status for _ in range(3)] == [200, 200, 429]
    # Requests without any Authorization header share one bucket of their own.
    async with aiohttp.ClientSession() as anonymous:
        assert await statuses(anonymous, server, 3) == [200, 200, 429]
    assert {r.authorization for r in server.requests if r.rate_limited} == {
        AUTH["Authorization"],
        other["Authorization"],
        None,
    }


async def test_a_key_the_server_refuses_still_spends_its_own_tokens(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    # The budget comes before authentication, as at a gateway in front of the API.
    budget = RequestBudget(rate=1, burst=1)
    async with FakeBananaServer(api_key="sk-other", clock=clock.time, budget=budget) as srv:
        assert srv.budget == budget
        assert (await create(session, srv)).status == 401
        assert (await create(session, srv)).status == 429
        assert (await create(session, srv, {"Authorization": "Bearer sk-other"})).status == 200


# -- what a refusal does (and does not do) ------------------------------------------------


async def test_a_refused_create_creates_no_task(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=1, burst=1)
    assert (await create(session, server)).status == 200
    server.plan(TaskScript(task_id="planned"))
    assert (await create(session, server)).status == 429
    assert len(server.tasks) == 1
    refused = server.requests[-1]
    assert (refused.kind, refused.task_id, refused.rate_limited) == ("create", None, True)
    # The plan was not used up by the refused create: the next create takes it.
    clock.now += 1.0
    assert (await create(session, server)).body["id"] == "planned"
    assert server.requests[-1].task_id == "planned"


async def test_image_downloads_are_never_limited(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=1, burst=1)
    task_id = (await create(session, server)).body["id"]
    clock.now += 10.0  # the task is done, and the bucket holds one token again,
    assert (await create(session, server)).status == 200  # which this create spends
    for _ in range(5):
        async with session.get(server.image_url(task_id)) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/png"
    assert server.count("image") == 5
    assert server.count_rate_limited("image") == 0
    assert (await create(session, server)).status == 429  # the bucket is still empty


async def test_the_budget_is_checked_before_faults(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=1, burst=1)
    assert (await create(session, server)).status == 200
    server.inject(Fault.status(503), on="create")
    assert (await create(session, server)).status == 429
    assert server.pending_faults == 1  # the refusal consumed no fault
    clock.now += 1.0
    assert (await create(session, server)).status == 503  # the token was paid all the same
    assert server.pending_faults == 0
    assert (await create(session, server)).status == 429


async def test_refusals_are_counted_by_kind(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.budget = RequestBudget(rate=1, burst=2)
    task_id = (await create(session, server)).body["id"]
    assert (await query(session, server, task_id)).status == 200
    assert (await query(session, server, task_id)).status == 429
    assert await statuses(session, server, 2) == [429, 429]
    assert server.count_rate_limited() == 3
    assert server.count_rate_limited("query") == 1
    assert server.count_rate_limited("create") == 2
    assert server.count() == 5
    assert [r.rate_limited for r in server.requests] == [False, False, True, True, True]


# -- changing the budget while the server runs ----------------------------------------------


async def test_raising_the_limit_keeps_the_tokens_earned_so_far(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=1, burst=5)
    assert await statuses(session, server, 6) == [200] * 5 + [429]
    clock.now += 2.0  # two tokens earned at the old rate
    server.budget = RequestBudget(rate=10, burst=10)
    assert await statuses(session, server, 3) == [200, 200, 429]
    clock.now += 0.5  # five tokens at the new rate
    assert await statuses(session, server, 6) == [200] * 5 + [429]


async def test_a_smaller_burst_caps_the_tokens_kept(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=1, burst=5)
    assert await statuses(session, server, 1) == [200]  # four left
    server.budget = RequestBudget(rate=1, burst=2)
    assert await statuses(session, server, 3) == [200, 200, 429]


async def test_none_lifts_the_limit_and_a_new_budget_starts_full(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.budget = RequestBudget(rate=1, burst=2)
    assert await statuses(session, server, 3) == [200, 200, 429]
    server.budget = None
    assert await statuses(session, server, 10) == [200] * 10
    server.budget = RequestBudget(rate=1, burst=3)
    assert await statuses(session, server, 4) == [200, 200, 200, 429]


async def test_only_a_budget_or_none_is_accepted(server: FakeBananaServer) -> None:
    with pytest.raises(TypeError, match="RequestBudget or None"):
        server.budget = 20  # type: ignore[assignment]
    assert server.budget is None


@pytest.mark.parametrize("rate", [0, -1, math.inf, math.nan, True, "20"])
def test_a_rate_must_be_a_finite_positive_number(rate: Any) -> None:
    with pytest.raises(ValueError, match="rate must be a finite number > 0"):
        RequestBudget(rate=rate)


@pytest.mark.parametrize("burst", [0, 0.5, -1, math.inf, math.nan, False])
def test_a_burst_must_hold_at_least_one_token(burst: Any) -> None:
    with pytest.raises(ValueError, match="burst must be None or a finite number >= 1"):
        RequestBudget(rate=1, burst=burst)


# -- as the client sees it ----------------------------------------------------------------


async def test_the_client_reads_the_refusal_as_a_rate_limit(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    server.budget = RequestBudget(rate=0.5, burst=1)
    async with ba.BananaClient(KEY, base_url=server.url, clock=clock, max_retries=0) as client:
        await client.create("a cat")
        with pytest.raises(ba.RateLimitError) as info:
            await client.create("a dog")
    assert info.value.status_code == 429
    assert info.value.retry_after == 2.0
    assert len(server.tasks) == 1
    assert server.count_rate_limited("create") == 1


# -- python -m banana_async.testing --------------------------------------------------------


async def test_the_command_serves_with_a_rate_limit(session: aiohttp.ClientSession) -> None:
    # A budget that refills once in 1000 s: the third request finds the
    # bucket empty whatever the machine's speed.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async.testing",
        "--port",
        "0",
        "--rate-limit",
        "0.001",
        "--burst",
        "2",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode()
        assert "0.001 requests a second per key, bursts of 2" in line
        url = line.split()[line.split().index("on") + 1].rstrip(",")
        statuses = []
        for _ in range(3):
            async with session.post(f"{url}/v1/banana/images", json=BODY) as resp:
                statuses.append((resp.status, resp.headers.get("Retry-After")))
        async with session.post(
            f"{url}/v1/banana/images", json=BODY, headers={"Authorization": "Bearer sk-other"}
        ) as resp:
            other = resp.status  # another key has a bucket of its own
    finally:
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0
    assert statuses[:2] == [(200, None), (200, None)]
    assert statuses[2][0] == 429
    assert statuses[2][1] is not None
    assert int(statuses[2][1]) >= 1
    assert other == 200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate-limit", "inf"], "--rate-limit: must be a finite number above zero"),
        (["--rate-limit", "0"], "--rate-limit: must be a finite number above zero"),
        (["--rate-limit", "5", "--burst", "0.5"], "--burst: must be at least 1"),
        (["--burst", "3"], "--burst needs --rate-limit"),
    ],
)
async def test_the_command_refuses_a_budget_that_cannot_be(argv: list[str], message: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async.testing",
        "--port",
        "0",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 2
    assert message in err.decode()
    assert out == b""  # it never listened
