"""A Hypothesis state machine for the poller: status words, faults and clock jumps.

The real client waits on tasks of the fake provider over loopback HTTP, on a
virtual clock whose every sleep ends only when the machine says so (and,
when it says so, possibly late: the clock jumps, as after a suspended laptop
or a stalled event loop). Between sleeps the machine queues what the next
polls answer: known and unknown status words, completions, failures, 5xx,
429 with and without ``Retry-After``, resets, malformed bodies, answers
about another task and errors that end a wait. After every step:

- a wait never ends early: only on a terminal answer, an error that polling
  again cannot fix, or its deadline;
- it never polls faster than its interval (nor, for a task, sooner than an
  interval after the task was created or the wait began);
- it never polls at or past its deadline, never sleeps past it, and a wait
  that times out ends at its deadline (later only by a clock jump).

Example counts follow the Hypothesis profile (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import attrs
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import banana_async as ba
from banana_async.testing import FakeBananaServer, FakeClock, Fault, RecordedRequest
from tests.conftest import API_KEY

EPSILON = 1e-6
"""Float slack on the virtual clock (its times are sums of float delays)."""

PENDING_WORDS = ["queued", "pending", "in_queue", "processing", "RUNNING", "in-progress"]
TERMINAL_WORDS = ["completed", "SUCCEEDED", "done", "failed", "error", "Cancelled", "timeout"]
WAIT_TIMEOUT = 300.0
"""The client's own deadline, for waits given none."""

UNKNOWN_WORDS = ["", " ", "paused", "rendering", "完成", "null", "0"]


class SteppedClock:
    """A virtual clock whose sleeps end only when :meth:`wake` is called.

    At most one sleeper exists at a time here: the wait, or the rate
    limiter's dispatcher while the wait is held for a turn. A second one
    would mean the model of this test is wrong, and fails it.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[tuple[float, float]] = []
        """Every sleep as (when, seconds)."""
        self.wakes: list[tuple[float, float]] = []
        """Every wake-up as (when it was due, how late it came)."""
        self.pending: tuple[float, asyncio.Future[None]] | None = None
        self.asleep = asyncio.Event()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"asked to sleep {seconds}"
        assert math.isfinite(seconds), f"asked to sleep {seconds}"
        assert self.pending is None, "two sleepers at once"
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleeps.append((self.now, seconds))
        self.pending = (self.now + seconds, wake)
        self.asleep.set()
        try:
            await wake
        finally:
            if self.pending is not None and self.pending[1] is wake:
                self.pending = None
                self.asleep.clear()

    def wake(self, late: float = 0.0) -> None:
        """End the sleep now, ``late`` seconds after it was due (a clock jump)."""
        assert self.pending is not None
        due, wake = self.pending
        self.pending = None
        self.asleep.clear()
        self.now = max(self.now, due) + late
        self.wakes.append((due, late))
        wake.set_result(None)


@attrs.frozen
class Answer:
    """What the next poll hears, and how a wait must take it."""

    fault: Fault
    ends: str | None
    """None: polling goes on; "completed", "failed" or "error": the wait ends so."""


def _dropped(record: RecordedRequest) -> bool:
    """Whether the fake reset the connection instead of answering ``record``."""
    return record.fault is not None and record.fault.action == "reset"


def _word(word: str) -> Answer:
    status = ba.TaskStatus.from_word(word)
    # A terminal word without an image URL (the fake sends none for a task
    # still running) is a failure to deliver: the parser makes it FAILED.
    return Answer(Fault.status_word(word), "failed" if status.terminal else None)


RETRY_AFTERS = [None, "0", "1", "2.5", "30", "120", "soon", "-5", "Wed, 21 Oct 2099 07:28:00 GMT"]

answers = st.one_of(
    st.sampled_from(PENDING_WORDS + UNKNOWN_WORDS + TERMINAL_WORDS).map(_word),
    st.text(max_size=8).map(_word),
    st.just(
        Answer(
            Fault.edit({"status": "completed", "image_url": "https://img.example/done.png"}),
            "completed",
        )
    ),
    st.just(Answer(Fault.edit({"status": "failed", "error": "it broke"}), "failed")),
    st.builds(
        lambda code, after: Answer(
            Fault.status(code, headers=None if after is None else {"Retry-After": after}), None
        ),
        st.sampled_from([408, 429, 500, 502, 503, 504]),
        st.sampled_from(RETRY_AFTERS),
    ),
    st.sampled_from(
        [
            Answer(Fault.reset(), None),
            Answer(Fault.html(502), None),
            Answer(Fault.html(200), None),
            Answer(Fault.body(b"not json"), None),
            Answer(Fault.body(b""), None),
            Answer(Fault.body(b"[1, 2]"), None),
            Answer(Fault.body(b'{"status": "processing"}'), None),
            Answer(Fault.edit({"id": "someone-else"}), None),
            Answer(Fault.edit({"created": "yesterday", "model": 5}), None),
            Answer(Fault.edit(remove=["status"]), None),
            # Errors that polling again cannot fix end the wait.
            Answer(Fault.status(401), "error"),
            Answer(Fault.status(403), "error"),
            Answer(Fault.status(404), "error"),
            Answer(Fault.status(400), "error"),
            Answer(Fault.body(b'{"code": 500, "msg": "busy"}'), "error"),
        ]
    ),
)


@attrs.define
class Wait:
    """One wait under way or ended, and what the machine knows of it."""

    task_id: str
    kind: str
    interval: float
    deadline: float
    started: float
    created: float | None
    """When the client created the task (its clock), for a task it created."""
    first_request: int
    """Index in the server's requests from which this wait's queries count."""
    first_sleep: int
    first_wake: int
    task: asyncio.Task[ba.Task]


class PollerMachine(RuleBasedStateMachine):
    """Drive the real poller through random answers and clock jumps."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = SteppedClock()
        self.server = FakeBananaServer(api_key=API_KEY, duration=None, clock=self.clock.time)
        self.loop.run_until_complete(self.server.start())
        self.client = ba.BananaClient(
            API_KEY,
            base_url=self.server.url,
            clock=self.clock,
            timeout=30,
            wait_timeout=WAIT_TIMEOUT,
            rate_limit_url="",
        )
        # The jitter comes from the client's own generator: seeded, a failing
        # program replays exactly (Hypothesis reports a flaky one otherwise).
        self.client._rng.seed(0)
        self.other = ba.BananaClient(
            API_KEY, base_url=self.server.url, timeout=30, rate_limit_url=""
        )
        self.loop.run_until_complete(self._enter())
        self.wait: Wait | None = None
        self.queued: list[Answer] = []

    async def _enter(self) -> None:
        await self.client.__aenter__()
        await self.other.__aenter__()

    def teardown(self) -> None:
        try:
            if self.wait is not None and not self.wait.task.done():
                self.wait.task.cancel()
                self.loop.run_until_complete(asyncio.wait([self.wait.task]))
        finally:
            self.loop.run_until_complete(self._close())
            self.loop.close()

    async def _close(self) -> None:
        await self.client.aclose()
        await self.other.aclose()
        await self.server.close()

    # -- driving -------------------------------------------------------------------

    def _run(self, coroutine: Any) -> Any:
        """Run a coroutine to its end, ending every sleep on time meanwhile."""
        task = self.loop.create_task(coroutine)
        while True:
            self._settle(task)
            if task.done():
                return task.result()
            self.clock.wake()

    def _settle(self, task: asyncio.Task[Any]) -> None:
        """Let the loop run until ``task`` ends or something sleeps on the clock."""

        async def settle() -> None:
            asleep = asyncio.ensure_future(self.clock.asleep.wait())
            try:
                await asyncio.wait({task, asleep}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                asleep.cancel()
                await asyncio.wait([asleep])

        self.loop.run_until_complete(settle())

    @property
    def running(self) -> bool:
        return self.wait is not None and not self.wait.task.done()

    # -- rules -----------------------------------------------------------------------

    @initialize(answers=st.lists(answers, max_size=3))
    def queue_first(self, answers: list[Answer]) -> None:
        for answer in answers:
            self.queue(answer)

    @rule(answer=answers)
    def queue(self, answer: Answer) -> None:
        """The next poll not yet answered hears ``answer``."""
        self.server.inject(answer.fault, on="query")
        self.queued.append(answer)

    @precondition(lambda self: not self.running)
    @rule(
        kind=st.sampled_from(["created", "bare id", "someone's task"]),
        interval=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
        timeout=st.sampled_from([10.0, 30.0, 120.0, None]),
    )
    def start(self, kind: str, interval: float, timeout: float | None) -> None:
        """Start a wait on a new task: one the client created, a bare id, or another's task."""
        creator = self.client if kind == "created" else self.other
        task = self._run(creator.create("a cat"))
        target: str | ba.Task = task.id if kind == "bare id" else task
        started = self.clock.now
        waiting = self.loop.create_task(
            self.client.wait(target, timeout=timeout, poll_interval=interval)
        )
        limit = WAIT_TIMEOUT if timeout is None else timeout
        self.wait = Wait(
            task_id=task.id,
            kind=kind,
            interval=interval,
            deadline=started + limit,
            started=started,
            created=started if kind == "created" else None,
            first_request=len(self.server.requests),
            first_sleep=len(self.clock.sleeps),
            first_wake=len(self.clock.wakes),
            task=waiting,
        )
        self._settle(waiting)
        self._check_ended()

    @precondition(lambda self: self.running and self.clock.pending is not None)
    @rule(late=st.one_of(st.just(0.0), st.floats(0.0, 3.0), st.sampled_from([50.0, 1e4])))
    def tick(self, late: float) -> None:
        """End the sleep under way, on time or late (the clock jumped)."""
        assert self.wait is not None
        self.clock.wake(late)
        self._settle(self.wait.task)
        self._check_ended()

    # -- what must hold ----------------------------------------------------------------

    def _polls(self, wait: Wait) -> list[tuple[int, float]]:
        """The wait's polls as (index of the request that answered, time sent).

        aiohttp sends a GET once more at once when a reused connection was
        dropped: that is one poll, not two.
        """
        polls: list[tuple[int, float]] = []
        requests = self.server.requests
        for index in range(wait.first_request, len(requests)):
            record = requests[index]
            if record.kind != "query" or record.task_id != wait.task_id:
                continue
            if polls and _dropped(requests[polls[-1][0]]) and record.at == polls[-1][1]:
                polls[-1] = (index, record.at)
                continue
            polls.append((index, record.at))
        return polls

    @invariant()
    def polls_keep_their_interval_and_deadline(self) -> None:
        wait = self.wait
        if wait is None:
            return
        polls = self._polls(wait)
        earliest = None
        if wait.kind == "created":
            assert wait.created is not None
            earliest = wait.created + wait.interval
        elif wait.kind == "someone's task":
            earliest = wait.started + wait.interval
        if polls and earliest is not None:
            assert polls[0][1] >= earliest - EPSILON, (polls[0], earliest)
        for (_, before), (_, after) in itertools.pairwise(polls):
            assert after - before >= wait.interval - EPSILON, (before, after, wait.interval)
        for _, at in polls:
            assert at < wait.deadline, f"polled at {at}, deadline {wait.deadline}"
        for at, seconds in self.clock.sleeps[wait.first_sleep :]:
            # Only a clock jump can carry it past the deadline; then it ends at once.
            past = at > wait.deadline + EPSILON
            assert seconds == 0 if past else at + seconds <= wait.deadline + EPSILON, (
                at,
                seconds,
                wait.deadline,
            )

    def _check_ended(self) -> None:
        wait = self.wait
        if wait is None or not wait.task.done():
            return
        polls = self._polls(wait)
        heard = [self._answer(index) for index, _ in polls]
        ends = [answer.ends for answer in heard]
        # Nothing before the last answer could end it: it did not end early.
        assert all(end is None for end in ends[:-1]), ends
        last = ends[-1] if ends else None
        exc = wait.task.exception()
        event(f"a wait ended: {type(exc).__name__ if exc else 'completed'}")
        event(f"polls in a wait: {len(polls) if len(polls) < 5 else '5+'}")
        if exc is None:
            assert last == "completed", ends
            assert wait.task.result().ok
        elif isinstance(exc, ba.TaskFailedError):
            assert last == "failed", (ends, exc)
        elif isinstance(exc, ba.TaskTimeoutError):
            assert last is None, (ends, exc)
            assert self.clock.now >= wait.deadline - EPSILON, (self.clock.now, wait.deadline)
            # At its deadline, unless a late wake-up carried the clock past it.
            jumped = any(
                late > 0 and due + late > wait.deadline
                for due, late in self.clock.wakes[wait.first_wake :]
            )
            assert jumped or self.clock.now <= wait.deadline + EPSILON, (
                self.clock.now,
                wait.deadline,
            )
        else:
            assert isinstance(exc, ba.BananaError), repr(exc)
            assert last == "error", (ends, repr(exc))
        self.wait = None

    def _answer(self, index: int) -> Answer:
        # The fault that answered it (None: a normal answer), as the fake recorded it.
        fault = self.server.requests[index].fault
        if fault is None:
            return Answer(Fault.status_word("processing"), None)  # the task runs on
        for answer in self.queued:
            if answer.fault is fault:
                return answer
        raise AssertionError(f"an answer nobody queued: {fault}")


PollerMachine.TestCase.settings = settings(max_examples=max(10, settings().max_examples // 4))
TestPoller = PollerMachine.TestCase


async def test_a_wait_held_for_a_turn_of_the_rate_limit_ends_at_its_deadline() -> None:
    """Found by the machine above: the limiter held a poll past the wait's deadline.

    With a hard cap of one request per 100 s, the create spends the only
    turn; the first poll's turn comes 100 s later, long after the wait's
    10 s. On the client's clock the wait sent that poll anyway (and returned
    the task, 90 s late); it must end at its deadline without sending it.
    """
    clock = FakeClock()
    async with (
        FakeBananaServer(api_key=API_KEY, duration=0.0, clock=clock.time) as server,
        ba.BananaClient(
            API_KEY,
            base_url=server.url,
            clock=clock,
            requests_per_second=0.01,
            poll_interval=1.0,
            rate_limit_url="",
        ) as client,
    ):
        task = await client.create("a cat")
        start = clock.now
        with pytest.raises(ba.TaskTimeoutError):
            await client.wait(task, timeout=10)
        assert server.count("query") == 0
        assert clock.now - start == pytest.approx(10.0)
