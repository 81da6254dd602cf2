"""The in-process request budget: learned from 429s, creates served first.

How the budget is learned (see :class:`AdaptiveRateLimiter`), in the spirit
of TCP's congestion control, whose problem this is: a sender that is told
only "too much" must find the rate a shared pipe allows.

* **Slow start.** Before the first 429 nothing is known. A batch opening
  with hundreds of creates at once would overrun any limited key by
  hundreds of requests, each answered 429, so the rate of creates (queries
  are not held: they come at the pace of polling) may double every
  :data:`SLOW_START_DOUBLING` seconds of demand from :data:`SLOW_START_RATE`;
  past :data:`NO_LIMIT_ABOVE` the limiter gets out of the way for good. An
  unlimited provider loses well under a second to this, once per client.
* **The estimate.** A provider that rate-limits a key answers about as many
  requests as its limit allows and 429s the rest, so a 429 measures its
  limit directly, in one step, where halving the rate would need many steps
  and many 429s to get there from a burst. At the first 429 the measure is
  the requests accepted over the last :data:`WINDOW` seconds (pauses left
  out). From the second on it is the requests accepted since the previous
  429 over the time since, pauses included: a provider's bucket is empty at
  each 429, so what it let through in between is exactly its rate times the
  time between, where a short window would count the burst its bucket had
  saved up as rate. (Not when the limiter left much of its own budget
  unused in between, :data:`MAX_IDLE`: the provider's bucket then filled up
  and wasted tokens, and the window measures better.)
* **Just under it.** The rate drops to :data:`BACKOFF` of the estimate: a
  gentle cut keeps about 95 % of the limit in use on average, where TCP's
  halving would keep 75 %.
* **Probing.** With demand, the rate climbs back to the estimate in
  :data:`RECOVERY` seconds, and on at that pace for :data:`PLATEAU` seconds
  more, slowly near where the last 429 came, so that 429s stay a few per
  cycle of hundreds of requests. Then the climb speeds up, its pace
  doubling every :data:`PROBE_DOUBLING` seconds, so a provider
  that raised the key's limit is found in seconds, not minutes (the shape of
  TCP CUBIC's growth: concave below the last maximum, convex above).

* **Catching up.** A 429 pauses every request, often for a second or more,
  while the provider's bucket refills; as the pause ends the limiter sends
  at once what the pause saved up (:data:`CATCH_UP`), in steps, and stops
  doing so for good if the provider refuses it.

Only 429s for requests sent after the last cut count: those already on the
wire say nothing about the new rate.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections import deque
from typing import TYPE_CHECKING

from banana_async._polling import Clock, SystemClock, check_interval

if TYPE_CHECKING:
    from banana_async.ratelimit import RequestKind

__all__ = [
    "BACKOFF",
    "CATCH_UP",
    "CATCH_UP_FIRST",
    "DEFAULT_PAUSE",
    "MAX_IDLE",
    "MIN_CYCLE",
    "NO_LIMIT_ABOVE",
    "PLATEAU",
    "PROBE_DOUBLING",
    "QUERY_PATIENCE",
    "RECOVERY",
    "RISEN",
    "SLOW_START_DOUBLING",
    "SLOW_START_RATE",
    "WINDOW",
    "AdaptiveRateLimiter",
]

logger = logging.getLogger("banana_async")

SLOW_START_RATE = 64.0
"""Requests per second allowed before anything is known, doubling with demand."""

SLOW_START_DOUBLING = 0.1
"""Seconds of demand in which the slow-start rate doubles."""

NO_LIMIT_ABOVE = 100_000.0
"""A slow-start rate past this without a 429 means the provider sets no limit we can reach."""

BACKOFF = 0.9
"""After a 429, the rate becomes this fraction of the provider's estimated limit."""

RECOVERY = 5.0
"""Seconds of demand to climb from ``BACKOFF`` times the estimate back to it."""

PROBE_DOUBLING = 1.0
"""Above the estimate, the speed of the climb doubles every this many seconds."""

WINDOW = 2.0
"""Seconds of accepted requests that measure the provider's limit at a first 429."""

PLATEAU = 2.0
"""Seconds of demand spent probing slowly just above the estimate before the climb speeds up."""

MIN_CYCLE = 3.0
"""Least seconds between two cuts for the answers in between to measure the limit."""

RISEN = 1.1
"""A cycle that let through more than this times the last estimate means the limit rose."""

MAX_IDLE = 0.2
"""Most of a cycle the limiter may have left its own budget unused for the cycle to count."""

QUERY_PATIENCE = 10.0
"""Seconds a status query waits behind creates before it goes first."""

DEFAULT_PAUSE = 1.0
"""Seconds every request pauses after a 429 without ``Retry-After``, before a rate is known."""

MIN_PAUSE = 0.05
"""Shortest pause after a 429 without ``Retry-After``."""

MIN_SPAN = 1.0
"""Least seconds of accepted answers that estimate a limit (see ``_accepted``)."""

MIN_GUESS = 1.0
"""Least requests per second a 429 sets without enough answers to measure a limit."""

MIN_RATE = 0.05
"""The learned rate never goes below this (one request in 20 s)."""

PACE = 0.1
"""A learned rate allows bursts of this many seconds' worth of requests.

Small, so requests go out evenly: a provider's own bucket then never sees a
burst that the average rate would not explain.
"""

CATCH_UP = 1.0
"""After a pause, send at once up to this many seconds' worth of what the pause saved up.

A provider's bucket refills while every request pauses, and the pause a
429 asks for is usually a second or more: a limiter that resumed at its
steady pace would leave that much of the budget unused at every 429. A
provider whose bucket turns out to keep nothing (a 429 comes right after
the catch-up) loses the catch-up for good.
"""

CATCH_UP_FIRST = 0.25
"""The share of :data:`CATCH_UP` tried at the first pause; doubled after each that goes through."""

CATCH_UP_BLAME = 0.5
"""A 429 for a request sent within this many seconds after a pause blames the catch-up."""

TICK = 0.005
"""Shortest sleep of the dispatcher: at most one wake-up per this many seconds."""

_BINS_PER_SECOND = 4
_BINS = int(WINDOW * _BINS_PER_SECOND)


class _Waiter:
    """A request waiting for its turn."""

    __slots__ = ("deadline", "future", "since")

    def __init__(
        self, future: asyncio.Future[float | None], since: float, deadline: float | None
    ) -> None:
        self.future = future
        self.since = since
        self.deadline = deadline


class AdaptiveRateLimiter:
    """A request budget for one process: a token bucket whose rate is learned.

    With ``learn=True`` (the default) the limiter finds the provider's limit
    from the 429s it gets (the design is in this module's docstring) and
    sends just under it; ``requests_per_second`` is a hard cap on top. With
    ``learn=False`` it is a plain token bucket at ``requests_per_second``
    (bursts of up to one second's worth), or no limit at all without one.
    Either way, :meth:`pause` holds every request.

    While the budget binds, requests queue, and creates go before status
    queries: a query mostly learns that a task is still processing, while a
    create left waiting is an image not started. A query waits at most
    ``query_patience`` seconds behind creates, so a finished task is never
    noticed much later than that.

    Args:
        requests_per_second: A hard cap on requests per second (0.001 to
            1,000,000); None for none.
        learn: Learn the provider's limit from its 429s.
        creates_first: Serve waiting creates before waiting queries; False
            serves every request in arrival order.
        query_patience: Seconds a query waits behind creates at most.
        clock: Where time is read and sleeping happens (the client passes its own).
    """

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        learn: bool = True,
        creates_first: bool = True,
        query_patience: float = QUERY_PATIENCE,
        clock: Clock | None = None,
    ) -> None:
        self._cap = (
            None
            if requests_per_second is None
            else check_interval(requests_per_second, "requests_per_second", low=0.001, high=1e6)
        )
        self._learn = learn
        self._creates_first = creates_first
        self._patience = check_interval(query_patience, "query_patience", low=0.0, high=86_400.0)
        self._clock: Clock = clock if clock is not None else SystemClock()
        # The learned rate: the slow-start ramp until the first 429, then
        # under the estimate; None once the ramp found no limit (or not learning).
        self._rate: float | None = SLOW_START_RATE if learn else None
        self._limit: float | None = None  # the provider's limit as last estimated
        self._cut_at = -math.inf
        self._since_cut = 0  # answers accepted since the last cut
        self._idle = 0.0  # seconds of our own budget left unused since the last cut
        self._above = 0.0  # seconds of demand spent at or above the estimate
        self._grown_at = -math.inf
        # The share of a pause's worth sent at once as it ends: grown while
        # the provider takes it, 0 once it did not (see CATCH_UP).
        self._catch_up = CATCH_UP_FIRST
        self._catch_up_at = -math.inf  # when the last catch-up began
        self._pause_began = -math.inf
        self._tokens = 0.0
        self._stamp: float | None = None
        self._paused_until = -math.inf
        self._pauses: deque[tuple[float, float]] = deque()
        self._creates: deque[_Waiter] = deque()
        # Each in arrival order (every request is a "create" here when not
        # creates_first). Queries are served fairly among themselves: a task
        # that polls fast must not starve the others' polls.
        self._queries: deque[_Waiter] = deque()
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._order = itertools.count()
        self._live = 0
        self._dispatcher: asyncio.Task[None] | None = None
        # Accepted answers per quarter second over the window, and since when.
        self._bins = [0] * _BINS
        self._bin_ids = [-1] * _BINS
        self._first: float | None = None
        self.limited = 0
        """How many 429s were recorded."""

    def __repr__(self) -> str:
        return (
            f"<AdaptiveRateLimiter rate={self.rate!r} provider_limit={self._limit!r} "
            f"cap={self._cap!r} waiting={self._live}>"
        )

    @property
    def rate(self) -> float | None:
        """The requests per second allowed now, or None when nothing limits them.

        Before the first 429 this is the slow-start ramp of creates (64 and
        up; None once it passed any limit a provider could have); after it,
        the learned rate. Either way capped by ``requests_per_second``.
        """
        rate, cap = self._rate, self._cap
        if rate is None:
            return cap
        return rate if cap is None else min(rate, cap)

    @property
    def provider_limit(self) -> float | None:
        """The provider's limit as estimated at the last 429, or None before any 429."""
        return self._limit

    @property
    def waiting(self) -> int:
        """Requests waiting for a turn now."""
        return self._live

    # -- the protocol ------------------------------------------------------------

    async def acquire(self, kind: RequestKind, *, timeout: float | None = None) -> float | None:
        """Wait for a turn; None if it would not come within ``timeout`` seconds."""
        now = self._clock.time()
        if kind == "query" and self._limit is None and self._cap is None:
            # Before the first 429 only creates ramp up: they are what a batch
            # sends by the hundred at once, while queries follow at the pace
            # of polling, and holding them would only make every task look
            # slower to the poll timing that learns from them.
            if now >= self._paused_until:
                return now
        elif not self._live and now >= self._paused_until:
            rate = self.rate
            if rate is None:
                return now
            self._refill(now, rate)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return now
        if timeout is not None and (timeout <= 0 or now + timeout <= self._paused_until):
            return None
        waiter = _Waiter(
            asyncio.get_running_loop().create_future(),
            now,
            None if timeout is None else now + timeout,
        )
        if kind == "query" and self._creates_first:
            self._queries.append(waiter)
        else:
            self._creates.append(waiter)
        if waiter.deadline is not None:
            heapq.heappush(self._deadlines, (waiter.deadline, next(self._order), waiter))
        self._live += 1
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.cancelled():
                self._forget_one()
            raise

    def record(self, turn: float, *, limited: bool) -> None:
        """Count an answer; a fresh 429 re-estimates the provider's limit."""
        now = self._clock.time()
        if not limited:
            tick = int(now * _BINS_PER_SECOND)
            slot = tick % _BINS
            if self._bin_ids[slot] != tick:
                self._bin_ids[slot] = tick
                self._bins[slot] = 0
            self._bins[slot] += 1
            if self._first is None:
                self._first = now
            self._since_cut += 1
            return
        self.limited += 1
        if not self._learn or turn < self._cut_at:
            return  # sent before the last cut: it says nothing about the new rate
        if self._catch_up and 0.0 <= turn - self._catch_up_at < CATCH_UP_BLAME:
            self._catch_up = 0.0
            logger.info("rate limited right after a pause: no catching up after pauses from now on")
        accepted, span = self._accepted(now)
        cycle = now - self._cut_at
        current = self._rate
        over_cycle = self._since_cut / cycle if MIN_CYCLE <= cycle < math.inf else None
        previous = self._limit
        if (
            over_cycle is not None
            and self._since_cut >= 4
            and self._idle <= MAX_IDLE * cycle
            and (previous is None or over_cycle <= RISEN * previous)
        ):
            # Between two 429s a provider's bucket goes from empty to empty,
            # so what it accepted in between is its rate times the time
            # between, pauses included (its bucket refilled then too). A
            # window of a second or two would count the burst its bucket
            # saved up as rate. (Unless the limit rose: the cycle then
            # mixes the old limit with the new, and the window is nearer.)
            measured: float | None = over_cycle
        elif accepted >= 4:
            measured = accepted / span
        else:
            measured = None
        if measured is not None:
            estimate = measured if current is None else min(measured, current)
        else:
            # Too few answers to measure (another process spends the key, or
            # a lone request met a pause): halve, as TCP does, but never
            # below one a second on so little evidence; the pause spaces them.
            estimate = max(MIN_GUESS, (current if current is not None else SLOW_START_RATE) / 2)
        self._limit = max(MIN_RATE, estimate)
        self._rate = max(MIN_RATE, BACKOFF * self._limit)
        self._above = 0.0
        self._cut_at = now
        self._since_cut = 0
        self._idle = 0.0
        self._tokens = 0.0
        self._stamp = now
        logger.info(
            "rate limited: the provider's limit looks like %.3g requests/s; sending %.3g/s",
            self._limit,
            self._rate,
        )

    async def pause(self, seconds: float | None) -> None:
        """Hold every request for ``seconds`` (None: briefly, by the rate)."""
        if seconds is None:
            rate = self.rate
            seconds = (
                DEFAULT_PAUSE
                if rate is None or not self._learn
                else min(DEFAULT_PAUSE, max(MIN_PAUSE, 1.0 / rate))
            )
        now = self._clock.time()
        until = now + seconds
        if until > self._paused_until:
            if now >= self._paused_until:
                self._pause_began = now  # else: a pause that runs is made longer
            logger.info("rate limited: pausing all requests for %.2f s", seconds)
            self._pauses.append((max(now, self._paused_until), until))
            self._paused_until = until
            # A pause is not demand: the climb resumes when requests flow.
            self._grown_at = max(self._grown_at, until)
            # Nor is it budget left unused: the bucket is filled for its end
            # now, at its own pace, and counts from there.
            paused = until - self._pause_began
            capped = self.rate
            if self._stamp is not None and capped is not None:
                self._stamp = max(self._stamp, until)
                burst = self._burst(capped)
                self._tokens = max(self._tokens, min(burst, self._tokens + paused * capped))
            rate = self._rate
            if self._catch_up and self._limit is not None and rate and self._cap is None:
                # What the provider's bucket saves up meanwhile, sent as the
                # pause ends (see CATCH_UP). Not under a configured cap: a
                # cap is the user's word on how fast to send.
                if -math.inf < self._catch_up_at < self._pause_began:
                    # The last catch-up went through: try a larger one.
                    self._catch_up = min(1.0, 2.0 * self._catch_up)
                saved = min(paused, CATCH_UP) * rate * self._catch_up
                self._tokens = max(self._tokens, saved)
                self._catch_up_at = until

    def take_over(self, *, rate: float | None, limit: float | None, cap: float | None) -> None:
        """Serve from now on at ``rate``, as the limiter that takes over from another.

        A limiter shared by several processes hands each one its share when
        the sharing stops (:class:`~banana_async.ratelimit.redis.RedisRateLimiter`
        while Redis is away): the learned rate, the estimate of the
        provider's limit and the cap become what is given, nothing saved up
        is sent at once (the bucket starts empty), and 429s for requests sent
        before now no longer re-estimate the limit.

        Args:
            rate: The learned rate to send at (None: no limit was found).
                With ``limit`` None it is where the slow-start ramp resumes.
            limit: The estimate of the provider's limit, or None before any 429.
            cap: The hard cap on requests per second from now on, or None.
        """
        now = self._clock.time()
        self._cap = None if cap is None else check_interval(cap, "cap", low=0.001, high=1e6)
        if self._learn:
            self._limit = None if limit is None else max(MIN_RATE, limit)
            self._rate = None if rate is None else max(MIN_RATE, rate)
            self._cut_at = now
            self._since_cut = 0
            self._idle = 0.0
            self._above = 0.0
        self._tokens = 0.0
        self._stamp = now
        self._grown_at = max(self._grown_at, now)

    # -- inside ----------------------------------------------------------------------

    def _burst(self, rate: float) -> float:
        if self._rate is None and self._limit is None:
            return max(1.0, rate)  # a configured cap alone: a second's worth, as documented
        return max(1.0, rate * PACE)

    def _refill(self, now: float, rate: float) -> None:
        stamp = self._stamp
        burst = self._burst(rate)
        if stamp is None:
            self._tokens = burst  # a fresh bucket starts full
        elif now > stamp:
            tokens = self._tokens + (now - stamp) * rate
            full = max(burst, self._tokens)  # more after a pause (see CATCH_UP)
            if tokens > full:
                # Budget that went unused: the provider's bucket saved it up
                # meanwhile, which a cycle's count must not take for rate.
                self._idle += (tokens - full) / rate
                tokens = full
            self._tokens = tokens
        else:
            return  # a pause still runs (see ``pause``)
        self._stamp = now

    def _accepted(self, now: float) -> tuple[int, float]:
        """Answers accepted over the window, and the seconds they span.

        Paused time is left out: nothing was sent then, so nothing could be
        accepted. The span is at least a second, so that the burst a fresh
        key allows at first is not taken for its rate.
        """
        tick = int(now * _BINS_PER_SECOND)
        count = sum(
            n for n, at in zip(self._bins, self._bin_ids, strict=True) if tick - _BINS < at <= tick
        )
        first = self._first if self._first is not None else now
        start = max(now - WINDOW, first)
        pauses = self._pauses
        while pauses and pauses[0][1] <= now - WINDOW:
            pauses.popleft()
        paused = sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in pauses)
        return count, max(MIN_SPAN, now - start - paused)

    def _grow(self, now: float) -> None:
        """Raise the learned rate for demand since the last grant (the budget binds)."""
        elapsed = now - self._grown_at
        if elapsed <= 0:
            return
        self._grown_at = now
        rate = self._rate
        if rate is None or (self._cap is not None and rate >= self._cap):
            return  # no learned limit, or the cap binds rather than it
        elapsed = min(elapsed, 1.0)
        limit = self._limit
        if limit is None:
            rate *= 2.0 ** (elapsed / SLOW_START_DOUBLING)
            self._rate = None if rate >= NO_LIMIT_ABOVE else rate
            return
        # Requests/s gained per second of demand.
        pace = (1.0 - BACKOFF) * limit / RECOVERY
        if rate >= limit:
            # Slowly for a while just above where the last 429 came, then
            # faster and faster: a limit that was raised is far above.
            self._above += elapsed
            pace *= 2.0 ** (max(0.0, self._above - PLATEAU) / PROBE_DOUBLING)
        self._rate = rate + pace * elapsed

    def _next_waiter(self, now: float) -> _Waiter | None:
        creates, queries = self._creates, self._queries
        while creates and creates[0].future.done():
            creates.popleft()
        while queries and queries[0].future.done():
            queries.popleft()
        if queries and (not creates or now - queries[0].since >= self._patience):
            return queries.popleft()
        return creates.popleft() if creates else None

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            waiter = heapq.heappop(deadlines)[2]
            if not waiter.future.done():
                waiter.future.set_result(None)
                self._live -= 1

    def _forget_one(self) -> None:
        """A waiter was cancelled; with none left, stop the dispatcher."""
        self._live -= 1
        if self._live == 0:
            self._creates.clear()
            self._queries.clear()
            self._deadlines.clear()
            if self._dispatcher is not None:
                self._dispatcher.cancel()
                self._dispatcher = None

    async def _dispatch(self) -> None:
        """Hand out turns while requests wait: one task, only while the budget binds."""
        clock = self._clock
        me = asyncio.current_task()
        self._grown_at = max(self._grown_at, clock.time())
        try:
            while self._live:
                now = clock.time()
                self._expire(now)
                if not self._live:
                    break
                wake = self._paused_until
                rate = self.rate
                if rate is not None and now >= wake:
                    self._refill(now, rate)
                    if self._tokens < 1.0:
                        # At high rates, wake for several turns at once: a
                        # timer per request would cost more than the request.
                        wake = now + max((1.0 - self._tokens) / rate, TICK)
                if wake > now:
                    if self._deadlines:
                        wake = min(wake, self._deadlines[0][0])
                    await clock.sleep(max(0.0, wake - now))
                    continue
                waiter = self._next_waiter(now)
                if waiter is None:
                    break
                if rate is not None:
                    self._tokens -= 1.0
                    self._grow(now)
                waiter.future.set_result(now)
                self._live -= 1
        finally:
            if self._dispatcher is me:
                self._dispatcher = None
