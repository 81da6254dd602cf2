"""The in-process request budget on a virtual clock: order, pauses, deadlines, learning.

A simulated provider here is a token bucket read on the same virtual clock;
only the limiter's own dispatcher sleeps, so virtual time moves exactly as
the limiter asks and every run is the same. Over loopback HTTP, against the
fake provider's own budget, see ``test_ratelimit_live.py``.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from banana_async.ratelimit import AdaptiveRateLimiter, RateLimiter, RequestKind
from banana_async.ratelimit._adaptive import NO_LIMIT_ABOVE
from banana_async.testing import FakeClock


class Bucket:
    """A provider's per-key budget: ``rate`` tokens a second, up to ``burst``."""

    def __init__(self, clock: FakeClock, rate: float, burst: float) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = clock.time()
        self.accepted: list[float] = []
        self.refused = 0

    def take(self) -> bool:
        now = self.clock.time()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.accepted.append(now)
            return True
        self.refused += 1
        return False

    @property
    def refused_share(self) -> float:
        """The share of all requests that were refused."""
        return self.refused / (self.refused + len(self.accepted))

    def accepted_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.accepted)


async def drive(
    limiter: AdaptiveRateLimiter,
    bucket: Bucket,
    clock: FakeClock,
    *,
    until: float,
    workers: int = 40,
    retry_after: float | None = None,
) -> None:
    """Keep ``workers`` requests always waiting, as a busy batch does, until ``until``."""

    async def worker() -> None:
        while clock.time() < until:
            turn = await limiter.acquire("create")
            assert turn is not None
            limited = not bucket.take()
            limiter.record(turn, limited=limited)
            if limited:
                await limiter.pause(retry_after)
            clock.now += 1e-5  # the request's own time: virtual time moves without a limit too
            await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(workers)))


def test_the_limiter_is_a_rate_limiter() -> None:
    assert isinstance(AdaptiveRateLimiter(), RateLimiter)


async def test_with_no_429_the_limiter_gets_out_of_the_way(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(clock=clock)
    bucket = Bucket(clock, rate=1e9, burst=1e9)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 3.5)
    # A slow start, then no limit at all, within 3.5 s of demand.
    assert limiter.rate is None
    assert limiter.provider_limit is None
    assert bucket.refused == 0
    assert len(bucket.accepted) > NO_LIMIT_ABOVE / 10
    turn = await limiter.acquire("create")  # and no waiting from then on
    assert turn == clock.time()


@pytest.mark.parametrize("retry_after", [1.0, None], ids=["retry-after", "no-retry-after"])
async def test_the_learned_rate_settles_just_under_the_providers_limit(
    clock: FakeClock, retry_after: float | None
) -> None:
    limiter = AdaptiveRateLimiter(clock=clock)
    bucket = Bucket(clock, rate=20.0, burst=20.0)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 60.0, retry_after=retry_after)
    assert limiter.provider_limit is not None
    assert 17.0 <= limiter.provider_limit <= 26.0
    # A sawtooth around the limit: cut under it, probing a little over it.
    assert limiter.rate is not None
    assert 15.0 <= limiter.rate <= 2.0 * limiter.provider_limit
    # The budget is used: at least 90 % of what the provider allows.
    used = bucket.accepted_between(start + 10.0, start + 60.0) / 50.0
    assert used >= 0.9 * 20.0
    # And 429s are few, first contact included.
    assert bucket.refused_share <= 0.03, bucket.refused_share


@pytest.mark.parametrize("retry_after", [1.0, None], ids=["retry-after", "no-retry-after"])
async def test_a_providers_saved_up_burst_is_not_taken_for_its_rate(
    clock: FakeClock, retry_after: float | None
) -> None:
    # A bucket that saves up three seconds' worth: over the window before a
    # 429 it lets through far more than its rate, but between two 429s it
    # goes from empty to empty.
    limiter = AdaptiveRateLimiter(clock=clock)
    bucket = Bucket(clock, rate=20.0, burst=60.0)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 60.0, retry_after=retry_after)
    assert limiter.provider_limit is not None
    assert 18.0 <= limiter.provider_limit <= 21.0
    assert bucket.refused_share <= 0.03, bucket.refused_share


async def test_what_a_pause_saved_up_is_sent_when_it_ends(clock: FakeClock) -> None:
    # Every 429 asks for two seconds: resuming at the steady pace would leave
    # two seconds of the provider's refilled bucket unused each time.
    limiter = AdaptiveRateLimiter(clock=clock)
    bucket = Bucket(clock, rate=20.0, burst=20.0)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 60.0, retry_after=2.0)
    used = bucket.accepted_between(start + 10.0, start + 60.0) / 50.0
    assert used >= 0.85 * 20.0
    assert bucket.refused_share <= 0.03, bucket.refused_share


@pytest.mark.parametrize("retry_after", [1.0, 2.0])
async def test_a_provider_that_saves_nothing_up_gets_no_catching_up(
    clock: FakeClock, retry_after: float
) -> None:
    # A bucket of one request: a catch-up after a pause is refused but for
    # one request, so after the first try the limiter stops catching up.
    limiter = AdaptiveRateLimiter(clock=clock)
    bucket = Bucket(clock, rate=20.0, burst=1.0)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 60.0, retry_after=retry_after)
    assert bucket.refused_share <= 0.03, bucket.refused_share


async def test_the_rate_climbs_again_when_the_provider_allows_more(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(clock=clock)
    bucket = Bucket(clock, rate=20.0, burst=20.0)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 40.0)
    assert limiter.provider_limit is not None
    assert limiter.provider_limit < 23.0
    bucket.rate = bucket.burst = 60.0
    await drive(limiter, bucket, clock, until=start + 80.0)
    assert limiter.rate is not None
    assert limiter.rate > 50.0
    used = bucket.accepted_between(start + 60.0, start + 80.0) / 20.0
    assert used >= 0.85 * 60.0


async def test_a_configured_cap_is_never_exceeded(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(requests_per_second=5.0, clock=clock)
    bucket = Bucket(clock, rate=1e9, burst=1e9)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 30.0)
    for second in range(30):
        # At most a burst of one second's worth on top of the rate.
        window = bucket.accepted_between(start + second, start + second + 1.0)
        assert window <= 10
    assert bucket.accepted_between(start, start + 30.0) <= 5 * 30 + 5


async def test_a_cap_stays_a_cap_under_a_learned_rate(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(requests_per_second=10.0, clock=clock)
    bucket = Bucket(clock, rate=40.0, burst=40.0)
    start = clock.time()
    await drive(limiter, bucket, clock, until=start + 20.0)
    assert bucket.refused == 0  # the cap is under the provider's limit: no 429 at all
    assert limiter.rate == 10.0


async def _waiting(limiter: AdaptiveRateLimiter, count: int) -> None:
    for _ in range(100):
        if limiter.waiting >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {limiter.waiting} waiting")


async def test_while_the_budget_binds_creates_go_before_queries(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(requests_per_second=1.0, learn=False, clock=clock)
    assert await limiter.acquire("create") is not None  # the one token there was
    order: list[str] = []

    async def one(kind: RequestKind, name: str) -> None:
        assert await limiter.acquire(kind) is not None
        order.append(name)

    tasks = [asyncio.create_task(one("query", f"q{i}")) for i in range(3)]
    await _waiting(limiter, 3)
    tasks += [asyncio.create_task(one("create", f"c{i}")) for i in range(3)]
    await asyncio.gather(*tasks)
    assert order == ["c0", "c1", "c2", "q0", "q1", "q2"]


async def test_a_query_waits_behind_creates_no_longer_than_its_patience(
    clock: FakeClock,
) -> None:
    limiter = AdaptiveRateLimiter(
        requests_per_second=1.0, learn=False, query_patience=3.0, clock=clock
    )
    assert await limiter.acquire("create") is not None
    served: dict[str, float] = {}

    async def one(kind: RequestKind, name: str) -> None:
        turn = await limiter.acquire(kind)
        assert turn is not None
        served[name] = turn  # the time of the turn (a waiter resumes a little later)

    start = clock.time()
    tasks = [asyncio.create_task(one("query", "q"))]
    tasks += [asyncio.create_task(one("create", f"c{i}")) for i in range(10)]
    await asyncio.gather(*tasks)
    # Two creates went first (one a second), then the query's patience ran out.
    assert served["q"] - start == pytest.approx(3.0)
    assert sorted(served, key=served.__getitem__).index("q") == 2


async def test_in_arrival_order_when_asked(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(
        requests_per_second=1.0, learn=False, creates_first=False, clock=clock
    )
    assert await limiter.acquire("create") is not None
    order: list[str] = []

    async def one(kind: RequestKind, name: str) -> None:
        assert await limiter.acquire(kind) is not None
        order.append(name)

    names = [("query", "q0"), ("create", "c0"), ("query", "q1"), ("create", "c1")]
    for kind, name in names:
        task = asyncio.create_task(one(kind, name))  # type: ignore[arg-type]
        await asyncio.sleep(0)
    await task
    await asyncio.sleep(0)
    assert order == ["q0", "c0", "q1", "c1"]


async def test_a_pause_holds_every_request_for_as_long_as_asked(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(clock=clock)
    start = clock.time()
    await limiter.pause(3.0)
    assert await limiter.acquire("query") == pytest.approx(start + 3.0)
    # A shorter pause never cuts a longer one short.
    await limiter.pause(5.0)
    await limiter.pause(1.0)
    assert await limiter.acquire("create") == pytest.approx(start + 8.0)


async def test_a_turn_that_would_come_too_late_is_refused_and_nothing_spent(
    clock: FakeClock,
) -> None:
    limiter = AdaptiveRateLimiter(requests_per_second=1.0, learn=False, clock=clock)
    await limiter.pause(10.0)
    start = clock.time()
    assert await limiter.acquire("create", timeout=5.0) is None
    assert clock.time() == start  # refused at once: the pause outlasts it
    assert await limiter.acquire("create", timeout=0.0) is None
    # Behind the bucket: refused at its deadline, and its token is still there.
    assert await limiter.acquire("create", timeout=11.0) == pytest.approx(start + 10.0)
    assert await limiter.acquire("create", timeout=0.5) is None
    assert clock.time() == pytest.approx(start + 10.5)
    assert await limiter.acquire("create") == pytest.approx(start + 11.0)
    assert limiter.waiting == 0


async def test_a_cancelled_wait_leaves_nothing_behind(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(clock=clock)
    await limiter.pause(60.0)
    waiters = [asyncio.create_task(limiter.acquire("create")) for _ in range(5)]
    await _waiting(limiter, 5)
    for waiter in waiters:
        waiter.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert limiter.waiting == 0
    assert limiter._dispatcher is None  # no task left sleeping through the pause


async def test_429s_of_requests_sent_before_a_cut_do_not_cut_again(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(clock=clock)
    turns = [await limiter.acquire("create") for _ in range(3)]
    for _ in range(40):  # a second of accepted answers to measure
        clock.now += 0.025
        limiter.record(clock.time(), limited=False)
    assert all(turn is not None for turn in turns)
    limiter.record(turns[0] or 0.0, limited=True)
    first = limiter.rate
    assert first is not None
    assert math.isfinite(first)
    for turn in turns[1:]:
        limiter.record(turn or 0.0, limited=True)  # on the wire before the cut
    assert limiter.rate == first
    assert limiter.limited == 3


async def test_before_any_429_only_creates_ramp_up(clock: FakeClock) -> None:
    limiter = AdaptiveRateLimiter(clock=clock)
    start = clock.time()
    queries = await asyncio.gather(*(limiter.acquire("query") for _ in range(500)))
    assert queries == [start] * 500  # polls are never held before the provider refuses one
    creates = await asyncio.gather(*(limiter.acquire("create") for _ in range(500)))
    assert all(turn is not None for turn in creates)
    # Creates ramp: from 64/s doubling every 0.1 s, 500 take a fraction of a second.
    assert 0.0 < max(t or 0.0 for t in creates) - start < 1.0
