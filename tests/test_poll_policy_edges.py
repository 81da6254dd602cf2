"""Edges of where PollPolicy aims a first poll once it has an estimate.

Found by mutation testing (see "Would the tests notice?" in
docs/reliability.md): the suite went through these paths without checking
the numbers, so that a first poll aimed too late, too early or not spread
went unnoticed. Decided without any HTTP or sleeping; the random draws are
seeded, and each test checks every one of many draws against its bound.
"""

from __future__ import annotations

import random

import pytest

from banana_async._polling import (
    HOLD_SPREAD,
    POLL_JITTER,
    WAKE_GRID,
    PollPolicy,
    censored_quantile,
)

KEY = ("nano-banana-2", "")
DRAWS = 200


def learned(durations: list[float], interval: float, seed: int = 3) -> PollPolicy:
    """A policy that saw tasks of KEY finish at ``durations`` (no scouting under way)."""
    policy = PollPolicy(rng=random.Random(seed))
    for duration in durations:
        policy.observe(KEY, last_pending=duration - 0.2, first_done=duration, interval=interval)
    assert policy.expected_duration(KEY) is not None
    return policy


def test_a_short_estimate_polls_one_interval_after_the_creation() -> None:
    # Tasks done in under an interval: the first poll still waits for one.
    interval = 1.0
    policy = learned([0.3, 0.4, 0.5, 0.6, 0.7], interval)
    for _ in range(DRAWS):
        delay = policy.first_poll(KEY, interval, 0.5).delay
        assert interval - 0.5 <= delay <= interval * (1 + POLL_JITTER) - 0.5
    # A task already older than that polls at once.
    assert {policy.first_poll(KEY, interval, 5.0).delay for _ in range(DRAWS)} == {0.0}


def test_a_long_estimate_is_aimed_at_with_the_jitter_only_lengthening_it() -> None:
    interval = 0.1
    policy = learned([3.0, 4.0, 5.0, 6.0, 7.0], interval)
    expected = policy.expected_duration(KEY)
    assert expected is not None
    delays = [policy.first_poll(KEY, interval, 0.0).delay for _ in range(DRAWS)]
    assert min(delays) >= expected
    assert max(delays) <= expected * (1 + POLL_JITTER - WAKE_GRID)
    assert max(delays) > expected * (1 + (POLL_JITTER - WAKE_GRID) / 2)  # it does spread
    # Past its aim, a task that did not hold polls at once.
    assert {policy.first_poll(KEY, interval, 60.0).delay for _ in range(DRAWS)} == {0.0}


@pytest.mark.parametrize("interval", [1.0, 4.0])
def test_a_held_task_past_its_aim_polls_soon_but_spread(interval: float) -> None:
    policy = learned([3.0, 4.0, 5.0, 6.0, 7.0], interval)
    delays = [policy.first_poll(KEY, interval, 60.0, held=True).delay for _ in range(DRAWS)]
    spread = HOLD_SPREAD * interval
    assert all(0.0 <= delay <= spread for delay in delays)
    # Spread over the whole half interval, not bunched at either end.
    assert min(delays) < spread / 4
    assert max(delays) > spread * 3 / 4


def test_a_task_watched_up_to_the_age_another_finished_was_still_at_risk_then() -> None:
    # Watched until 2 s without finishing: at 2 s it could still have
    # finished, so one of the two tasks at risk then finished (not one of
    # one), and only two thirds of all three are known done by 2 s.
    assert censored_quantile([1.0, 2.0], [2.0], 2 / 3) == 2.0
    assert censored_quantile([1.0, 2.0], [2.0], 0.8) is None


def test_each_task_watched_only_briefly_leaves_the_tasks_at_risk_one_by_one() -> None:
    # Five tasks; one watched until 0.5 s. Of the four left, one finished
    # by 1 s (25 %) and two by 2 s (50 %).
    assert censored_quantile([1.0, 2.0, 3.0, 4.0], [0.5], 0.25) == 1.0
    assert censored_quantile([1.0, 2.0, 3.0, 4.0], [0.5], 0.5) == 2.0
    assert censored_quantile([1.0, 2.0, 3.0, 4.0], [0.5, 0.6], 0.5) == 2.0


def aims(policy: PollPolicy, key: tuple[str, str], interval: float) -> list[float]:
    """Delays to the first poll of many new tasks of ``key``, created just now."""
    return [policy.first_poll(key, interval, 0.0).delay for _ in range(DRAWS)]


def within_the_aim(delays: list[float], expected: float) -> bool:
    return all(expected <= d <= expected * (1 + POLL_JITTER - WAKE_GRID) for d in delays)


def test_a_task_done_at_its_first_poll_teaches_the_interval_before_it() -> None:
    # Seen done at 10 s by the first poll (interval 2 s): it finished in
    # (8, 10], so the next tasks are first polled from 9 s, before 10 s.
    interval = 2.0
    policy = PollPolicy(rng=random.Random(5))
    for _ in range(5):
        policy.observe(KEY, last_pending=None, first_done=10.0, interval=interval)
    assert within_the_aim(aims(policy, KEY, interval), 9.0)


def test_a_task_seen_running_long_before_it_was_seen_done_teaches_the_middle() -> None:
    # Last seen running at 4 s, then done at 10 s (a failed poll between):
    # it finished in (4, 10], whose middle, 7 s, is where later tasks are
    # first polled; not the last interval's middle (9 s).
    interval = 2.0
    policy = PollPolicy(rng=random.Random(5))
    for _ in range(5):
        policy.observe(KEY, last_pending=4.0, first_done=10.0, interval=interval)
    assert within_the_aim(aims(policy, KEY, interval), 7.0)


def test_a_new_resolution_is_aimed_from_its_own_model_not_from_every_model() -> None:
    # Model A's tasks take about 10 s, model B's 30 s; a task of model A at
    # a resolution not seen yet is first polled at A's duration.
    interval = 2.0
    policy = PollPolicy(rng=random.Random(5))
    for _ in range(5):
        policy.observe(("a", "1K"), last_pending=9.0, first_done=11.0, interval=interval)
    for _ in range(20):
        policy.observe(("b", "1K"), last_pending=29.0, first_done=31.0, interval=interval)
    assert within_the_aim(aims(policy, ("a", "2K"), interval), 10.0)
    assert within_the_aim(aims(policy, ("b", "2K"), interval), 30.0)
    # A model never seen falls back to every task: mostly model B's.
    assert within_the_aim(aims(policy, ("c", "1K"), interval), 30.0)
