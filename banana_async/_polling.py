"""Poll timing: how long to wait before the next status query.

The providers ask for 2-5 s between polls of one task and rate-limit faster
polling, so no delay produced here is ever below the minimum interval; jitter
only ever lengthens it, which also spreads thousands of pollers started
together.

:class:`PollPolicy` learns how long tasks take, per model and resolution, from
tasks this client saw finish, and aims the first poll of a new task near the
:data:`FIRST_POLL_QUANTILE` of those durations: early enough that few tasks
finish long before it, late enough to skip the polls that would only have
said "processing". After that it polls at the minimum interval.

While nothing is known yet about a model and resolution (the first wave of a
batch), a few tasks, the *scouts*, poll at the interval, and the others
*hold* their first poll until the scouts show when it is worth sending; see
:class:`PollPolicy`.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from banana_async.errors import InvalidRequestError

DEFAULT_POLL_INTERVAL = 2.0
"""Seconds between status queries of one task: the providers' recommendation."""

POLL_JITTER = 0.1
"""Up to this fraction of the interval is added at random to each delay."""

FIRST_POLL_QUANTILE = 0.28
"""Where the first poll of a task is aimed in the learned duration distribution.

Chosen by simulation (600 tasks of 5-15 s at concurrency 100, 2 s interval),
together with the scouts (:data:`SCOUTS`): about 2.5 queries per task after
the first wave, with a mean of 1.25 s between a task finishing and the
client seeing it, against 5.5 queries for fixed 2 s polling. It was 0.3 when
the whole first wave polled at the interval: the estimate then started from
the first wave's durations measured in 2 s steps, which happened to aim a
little early for hundreds of tasks. Scouts measure the first wave better,
and 0.28 keeps the tasks after it where they were.
"""

DURATION_HISTORY = 256
"""Durations remembered per model and resolution (the most recent ones)."""

MIN_SAMPLES = 5
"""Durations needed before a learned estimate is trusted."""

SCOUTS = 16
"""Tasks per model and resolution that poll at the interval while nothing is known.

Every other task of that model and resolution holds its first poll until
the scouts show how long such tasks take. More scouts learn sooner and more
surely, but each spends a poll every interval. Chosen by simulation with
:data:`HOLD_SPREAD` and :data:`HOLD_RECHECK` (600 tasks of 5-15 s, concurrency
100, 2 s interval): the whole batch, first wave included, then costs about
2.6 queries per task at a mean of 1.25 s between a task finishing and the
client seeing it, where polling the first wave at the interval cost 3.0
queries at 1.2 s. Fewer scouts (12) made the estimate noisy enough to cost
more than they save.
"""

SCOUTED_TASKS = 64
"""Tasks of one model and resolution whose polls feed its scouts' estimate.

The scouts, then the first held tasks to be released: they are the same
kind of task as the scouts, picked by nothing but timing, and they are
polled at the interval once released: four times as many tasks for the
estimate, at no extra query. Capped so that computing it stays cheap.
"""

HOLD_RECHECK = 0.5
"""A held task asks again whether it may poll every this fraction of the interval.

Nothing wakes it when the scouts report (the injected clock only sleeps), so
this is how late it may learn; the wake grid wakes all held tasks of a batch
in one event-loop turn.
"""

HOLD_SPREAD = 0.5
"""Held tasks already past their aim poll within this fraction of the interval.

They learn it together, and are already late: soon, but spread at random
over half an interval, so that their polls do not all reach the provider
(and its rate limit) at the same moment.
"""

MAX_HOLD = 30
"""Intervals a task may hold its first poll at most.

The bound for scouts that never finish or keep failing: their silence must
not hold the other tasks until their deadlines.
"""

DEFAULT_WAIT_TIMEOUT = 900.0
"""Seconds a ``wait`` or ``generate`` may take unless told otherwise."""


class Clock(Protocol):
    """Where the client reads the time and sleeps; inject one to test without waiting."""

    def time(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep this many seconds of this clock's time."""
        ...


class SystemClock:
    """The real clock: the event loop's monotonic time and :func:`asyncio.sleep`."""

    def time(self) -> float:
        """Monotonic seconds: what the event loop's own clock reads by default."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep with :func:`asyncio.sleep`."""
        await asyncio.sleep(seconds)


WAKE_GRID = POLL_JITTER / 4
"""Wake-ups are rounded up to multiples of this fraction of the interval.

Timer coalescing: thousands of pollers whose jittered wake-ups land on a
shared grid wake in one event-loop iteration instead of one iteration each,
which costs far less CPU; the jitter survives in grid-sized steps. The
random part of a delay is drawn from the jitter less one grid step, so a
rounded delay still never exceeds :data:`POLL_JITTER`.
"""


def poll_delay(interval: float, *, rng: random.Random | None = None) -> float:
    """The delay before the next poll: ``interval`` plus up to :data:`POLL_JITTER` of it.

    Before rounding to the wake grid (:func:`wake_delay`) the added part is
    at most ``POLL_JITTER - WAKE_GRID`` of the interval.
    """
    return interval * (1.0 + (rng or random).uniform(0.0, POLL_JITTER - WAKE_GRID))


def wake_delay(now: float, delay: float, interval: float) -> float:
    """``delay`` lengthened so that ``now + delay`` falls on the interval's wake grid."""
    step = interval * WAKE_GRID
    return math.ceil((now + delay) / step) * step - now


MIN_POLL_INTERVAL = 0.001
"""The shortest ``poll_interval`` accepted (tests poll fast; providers want 2-5 s)."""

MAX_POLL_INTERVAL = 86_400.0
"""The longest ``poll_interval`` accepted: image URLs expire in about a day."""


def _is_positive_number(value: object) -> bool:
    """An int or float above zero (infinity too); never a bool, never NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def check_interval(
    value: float,
    name: str = "poll_interval",
    *,
    low: float = MIN_POLL_INTERVAL,
    high: float = MAX_POLL_INTERVAL,
) -> float:
    """Validate a positive rate or interval given by a caller, within ``[low, high]``.

    A bound keeps the arithmetic of wake-ups and rate buckets finite: an
    interval of ``1e-320`` seconds would overflow it.
    """
    if not _is_positive_number(value):
        raise InvalidRequestError(f"{name} must be a positive number, not {value!r}")
    if math.isinf(value):
        raise InvalidRequestError(f"{name} must be finite")
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low:g} and {high:g}, not {value!r}")
    return float(value)


MIN_TIMEOUT = 0.001
"""The shortest deadline accepted: a shorter one could only ever expire."""


def check_timeout(value: float | None, name: str = "timeout") -> float | None:
    """Validate a deadline: None or infinity mean none, otherwise seconds >= 0.001."""
    if value is None:
        return None
    if not _is_positive_number(value):
        raise InvalidRequestError(
            f"{name} must be a positive number of seconds or None, not {value!r}"
        )
    if value < MIN_TIMEOUT:
        raise InvalidRequestError(f"{name} must be at least {MIN_TIMEOUT:g} s, not {value!r}")
    return None if math.isinf(value) else float(value)


DurationKey = tuple[str, str]
"""What durations are learned per: (model, resolution or "")."""


def censored_quantile(
    done: Iterable[float], unfinished: Iterable[float], quantile: float
) -> float | None:
    """The ``quantile`` of task durations, counting the tasks not finished yet.

    ``done`` are the durations of finished tasks, ``unfinished`` the ages up
    to which other tasks were watched without finishing (their durations are
    longer; ``math.inf`` for a task still watched). The plain quantile of
    ``done`` alone is biased low while tasks are still running, because the
    first tasks seen finish are the shortest. This is the Kaplan-Meier
    (product-limit) estimate instead: a task counts among those that could
    finish at some age only while it was watched.

    Returns:
        The shortest finished duration by which at least ``quantile`` of all
        the tasks are estimated done, or None if the tasks seen cannot tell yet.
    """
    ordered = sorted(done)
    censored = sorted(unfinished)
    at_risk = len(ordered) + len(censored)
    survival = 1.0
    next_censored = 0
    index = 0
    while index < len(ordered):
        duration = ordered[index]
        while next_censored < len(censored) and censored[next_censored] < duration:
            next_censored += 1
            at_risk -= 1
        finished = bisect.bisect_right(ordered, duration, index) - index
        survival *= 1.0 - finished / at_risk
        if 1.0 - survival >= quantile - 1e-9:  # 3 of 10 is 0.3, not 0.29999999999999993
            return duration
        at_risk -= finished
        index += finished
    return None


class Scout:
    """A task whose polls feed the estimate of its model and resolution while it is scouted.

    Made by :meth:`PollPolicy.first_poll` for a *lead* scout (one of the
    :data:`SCOUTS` that poll at the interval from their creation) or for a
    held task when it is released (up to :data:`SCOUTED_TASKS` in all). Its
    waiter reports every poll that saw the task still running
    (:meth:`saw_running`), reports a success through
    :meth:`PollPolicy.observe` (``scout=``), and calls :meth:`leave` when the
    wait ends, however it ends.
    """

    __slots__ = ("_cohort", "_key", "_left", "_policy", "lead", "running", "stagger")

    def __init__(
        self, policy: PollPolicy, key: DurationKey, cohort: _Cohort, *, lead: bool
    ) -> None:
        self._policy = policy
        self._key = key
        self._cohort = cohort
        self._left = False
        self.lead = lead
        """True for a lead scout, which holds one of the :data:`SCOUTS` places."""
        self.running: float | None = None
        """The age (seconds after creation) at which a poll last saw it running."""
        self.stagger = 0.0
        """Seconds added once, after its first poll (see :meth:`saw_running`)."""
        cohort.active.add(self)
        cohort.enlisted += 1
        if lead:
            cohort.leads += 1

    def saw_running(self, age: float, delay: float) -> float:
        """A poll ``age`` seconds after the creation saw the task still running.

        Returns:
            The delay until the next poll: ``delay``, plus this scout's
            :attr:`stagger` after its first poll. The lead scouts start
            together; these extra delays spread their polls over one
            interval, so that together they look at the time line every
            fraction of an interval and the first tasks to finish show
            sooner. Added after the first poll, not before it: a task
            shorter than the interval is still seen one interval after its
            creation.
        """
        first = self.running is None
        self.running = age
        if not first:
            return delay
        self._cohort.stale = True  # it now counts among the tasks watched
        return delay + self.stagger

    def leave(self, duration: float | None = None) -> None:
        """The wait ended: the task took ``duration`` seconds, or None if not seen done.

        A task that failed, timed out or was cancelled still tells that it ran
        at least until it was last seen running. Only the first call counts.
        """
        if self._left:
            return
        self._left = True
        cohort = self._cohort
        cohort.active.discard(self)
        if self.lead:
            cohort.leads -= 1
        if duration is not None:
            cohort.done.append(duration)
        elif self.running is not None:
            cohort.unfinished.append(self.running)
        cohort.stale = True
        self._policy._maybe_close(self._key, cohort)


class _Cohort:
    """What the scouts of one model and resolution have shown so far."""

    __slots__ = (
        "_aim",
        "_release",
        "active",
        "done",
        "enlisted",
        "leads",
        "stale",
        "unfinished",
    )

    def __init__(self) -> None:
        self.active: set[Scout] = set()
        self.leads = 0
        self.enlisted = 0
        self.done: list[float] = []
        self.unfinished: list[float] = []
        """The last running ages of scouts that left without finishing."""
        self.stale = False
        self._aim: float | None = None
        self._release: float | None = None

    def estimates(self) -> tuple[float | None, float | None]:
        """The aim (:data:`FIRST_POLL_QUANTILE`) and the release age, each or None.

        The release age is the shortest duration seen: a held task at least
        that old may be done already, and would only be seen later for
        waiting on the aim. Computed
        again only after a scout reported something, since held tasks ask
        every :data:`HOLD_RECHECK` of an interval and may be thousands.
        """
        if self.stale:
            self.stale = False
            # A task still watched may finish at any age from now on, so it
            # is at risk at every age (censored at infinity) until it
            # reports. One not yet polled tells nothing, and is left out:
            # the tasks polled so far are no different from the others.
            watched = sum(1 for scout in self.active if scout.running is not None)
            unfinished = [*self.unfinished, *[math.inf] * watched]
            self._release = min(self.done, default=None)
            self._aim = None
            if len(self.done) + len(unfinished) >= MIN_SAMPLES:
                self._aim = censored_quantile(self.done, unfinished, FIRST_POLL_QUANTILE)
        return self._aim, self._release


class FirstPoll(NamedTuple):
    """When the first poll of a task comes: see :meth:`PollPolicy.first_poll`."""

    delay: float
    """Seconds from now."""
    hold: bool
    """True if no poll comes after the delay: ask :meth:`PollPolicy.first_poll` again then."""
    scout: Scout | None
    """The task's :class:`Scout`, if its polls feed the estimate."""


class PollPolicy:
    """Learns task durations and decides when to poll.

    Durations are learned from the polls themselves: a task first seen done at
    ``t`` after its creation, whose previous poll (at ``p``) still said
    "processing", finished somewhere in ``(p, t]``, and the middle of that
    window is remembered. A task done at its first poll has no previous poll;
    its window is taken to be one interval wide, which keeps the estimate from
    drifting upwards as the first poll moves later.

    Without an estimate for a model and resolution (at any level of the
    fallback), the first tasks to wait on it become :data:`SCOUTS` that poll
    at the interval, and every other one *holds*: it sends nothing, and asks
    again every :data:`HOLD_RECHECK` of an interval. Without holding, a whole
    first wave polls at the interval and costs twice the queries of the
    waves after it. A held task polls once it learns one of these:

    * the scouts' estimate of the :data:`FIRST_POLL_QUANTILE` duration: it
      aims its first poll there, as the tasks that start later do;
    * or, sooner, that it is already as old as the quickest scout took: it
      is then about as likely to be done, so it polls soon (within
      :data:`HOLD_SPREAD` of an interval, so that hundreds do not go at
      once), and its polls feed the estimate too;
    * or that it held :data:`MAX_HOLD` intervals: it polls as a scout.

    The first durations to show are the shortest, so their plain quantile
    would aim every later task too early; the estimate counts the scouts
    still running (:func:`censored_quantile`). For the same reason the key's
    own samples take over only once its scouts are all gone, and an estimate
    for a whole model (or for every task) is not trusted while scouts under
    it are out.
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._samples: dict[object, deque[float]] = {}
        self._estimates: dict[object, float | None] = {}
        self._cohorts: dict[DurationKey, _Cohort] = {}
        # Open cohorts under each model, and under None (all of them): those
        # levels' samples so far are the shortest tasks, not to be trusted.
        self._scouting: dict[object, int] = {}

    def poll_delay(self, interval: float) -> float:
        """Delay between polls: ``interval`` plus up to :data:`POLL_JITTER` of it."""
        return poll_delay(interval, rng=self._rng)

    def expected_duration(self, key: DurationKey) -> float | None:
        """The learned duration to aim the first poll of a task of ``key`` at, or None.

        The :data:`FIRST_POLL_QUANTILE` of the durations seen, falling back
        from (model, resolution) to the model, then to every task, and
        skipping a level with scouts out under it. While ``key`` itself is
        scouted, the scouts' estimate, if any.
        """
        cohorts = self._cohorts
        if cohorts:
            cohort = cohorts.get(key)
            if cohort is not None:
                return cohort.estimates()[0]
        for level in (key, key[0], None):
            if cohorts and self._scouting.get(level):
                continue
            estimate = self._estimate(level)
            if estimate is not None:
                return estimate
        return None

    def first_poll(
        self, key: DurationKey, interval: float, elapsed: float, *, held: bool = False
    ) -> FirstPoll:
        """Decide the first poll of a task of ``key`` created ``elapsed`` seconds ago.

        With an estimate, the poll is aimed at it (plus jitter); without one,
        the task is a lead scout if :data:`SCOUTS` are not all out, and polls
        one interval after its creation, or else it holds (see the class).
        A held task asks again with ``held=True`` after the returned delay.
        No poll comes sooner than one interval (plus jitter) after creation.
        """
        cohort = self._cohorts.get(key)
        if cohort is None:
            expected = self.expected_duration(key)
            if expected is not None:
                return FirstPoll(self._aimed(expected, interval, elapsed, held), False, None)
            cohort = self._open(key)
        aim, release = cohort.estimates()
        if aim is not None:
            return FirstPoll(self._aimed(aim, interval, elapsed, held), False, None)
        hold_limit = MAX_HOLD * interval
        if cohort.leads < SCOUTS or elapsed >= hold_limit:
            scout = Scout(self, key, cohort, lead=True)
            if cohort.enlisted <= SCOUTS:
                scout.stagger = interval * (cohort.enlisted - 1) / SCOUTS
            return FirstPoll(max(0.0, self.poll_delay(interval) - elapsed), False, scout)
        if release is not None and elapsed >= release:
            reporter = None
            if cohort.enlisted < SCOUTED_TASKS:
                reporter = Scout(self, key, cohort, lead=False)
            return FirstPoll(self._aimed(release, interval, elapsed, held), False, reporter)
        wake = min(HOLD_RECHECK * interval, hold_limit - elapsed)
        if release is not None:
            wake = min(wake, release - elapsed)
        return FirstPoll(wake, True, None)

    def _aimed(self, expected: float, interval: float, elapsed: float, held: bool) -> float:
        """Delay to a first poll aimed at ``expected`` seconds after the creation."""
        if expected <= interval:
            delay = max(0.0, self.poll_delay(interval) - elapsed)
        else:
            jitter = self._rng.uniform(0.0, POLL_JITTER - WAKE_GRID)
            delay = max(0.0, expected * (1.0 + jitter) - elapsed)
        if delay == 0.0 and held:
            # Held past its aim: it learned the aim late. Soon, but spread.
            return self._rng.uniform(0.0, HOLD_SPREAD * interval)
        return delay

    def observe(
        self,
        key: DurationKey,
        *,
        last_pending: float | None,
        first_done: float,
        interval: float,
        scout: Scout | None = None,
    ) -> None:
        """Learn from a task first seen done ``first_done`` s after its creation.

        Args:
            key: The task's model and resolution.
            last_pending: When (after creation) a poll last saw it unfinished,
                or None if none did.
            first_done: When (after creation) a poll first saw it finished.
            interval: The poll interval in use.
            scout: The task's :class:`Scout`, if it has one; it leaves.
        """
        low = last_pending if last_pending is not None else max(0.0, first_done - interval)
        sample = (low + first_done) / 2.0
        for level in (key, key[0], None):
            samples = self._samples.get(level)
            if samples is None:
                samples = self._samples[level] = deque(maxlen=DURATION_HISTORY)
            samples.append(sample)
            self._estimates.pop(level, None)
        if scout is not None:
            scout.leave(sample)
        elif key in self._cohorts:
            self._maybe_close(key, self._cohorts[key])

    def _open(self, key: DurationKey) -> _Cohort:
        cohort = self._cohorts[key] = _Cohort()
        for level in (key[0], None):
            self._scouting[level] = self._scouting.get(level, 0) + 1
        return cohort

    def _maybe_close(self, key: DurationKey, cohort: _Cohort) -> None:
        """Stop scouting ``key`` once its own samples can take over.

        That is once its scouts are all gone (before, its samples lack the
        longest tasks of the first wave), or once its samples are a full
        history anyway, which also ends the scouting of a key whose scouts
        never finish.
        """
        if self._cohorts.get(key) is not cohort or self._estimate(key) is None:
            return
        if cohort.active and len(self._samples[key]) < DURATION_HISTORY:
            return
        del self._cohorts[key]
        for level in (key[0], None):
            count = self._scouting[level] - 1
            if count:
                self._scouting[level] = count
            else:
                del self._scouting[level]

    def _estimate(self, level: object) -> float | None:
        if level in self._estimates:
            return self._estimates[level]
        samples = self._samples.get(level)
        estimate = None
        if samples is not None and len(samples) >= MIN_SAMPLES:
            ordered = sorted(samples)
            estimate = ordered[int(FIRST_POLL_QUANTILE * (len(ordered) - 1))]
        self._estimates[level] = estimate
        return estimate
