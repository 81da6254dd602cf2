"""PollPolicy's scouts and holds, decided without any HTTP or sleeping."""

from __future__ import annotations

import math
import random

import pytest

from banana_async._polling import (
    FIRST_POLL_QUANTILE,
    HOLD_RECHECK,
    HOLD_SPREAD,
    MAX_HOLD,
    POLL_JITTER,
    SCOUTED_TASKS,
    SCOUTS,
    FirstPoll,
    PollPolicy,
    censored_quantile,
)

KEY = ("nano-banana-2", "")
INTERVAL = 2.0
LATE = INTERVAL * (1 + POLL_JITTER)


def new_policy() -> PollPolicy:
    return PollPolicy(rng=random.Random(7))


def lead_scouts(policy: PollPolicy, count: int = SCOUTS) -> list[FirstPoll]:
    return [policy.first_poll(KEY, INTERVAL, 0.0) for _ in range(count)]


def finish(policy: PollPolicy, first: FirstPoll, duration: float) -> None:
    """Report a scout seen running one interval before ``duration``, then done at it."""
    assert first.scout is not None
    first.scout.saw_running(duration - INTERVAL, INTERVAL)
    policy.observe(
        KEY,
        last_pending=duration - INTERVAL,
        first_done=duration,
        interval=INTERVAL,
        scout=first.scout,
    )


# --------------------------------------------------------------------------- censored_quantile


def test_without_running_tasks_it_is_the_plain_quantile() -> None:
    durations = [float(d) for d in range(1, 11)]
    assert censored_quantile(durations, [], 0.3) == 3.0
    assert censored_quantile(durations, [], 1.0) == 10.0


def test_tasks_still_running_keep_the_first_durations_from_passing_for_the_quantile() -> None:
    # The three quickest of ten have finished: their own 30 % quantile says
    # 5 s, but only 3 tasks in 10 are done by 7 s.
    done, running = [5.0, 6.0, 7.0], [math.inf] * 7
    assert censored_quantile(done, running, 0.3) == 7.0
    assert censored_quantile(done, running, 0.5) is None  # cannot tell yet


def test_a_task_watched_only_up_to_some_age_counts_only_up_to_it() -> None:
    # Left at 5.5 s (a timeout, a cancel): from then on, 1 of the 2 tasks
    # still watched finished at 6 s, so half of the rest is done by then.
    assert censored_quantile([5.0, 6.0, 7.0], [5.5, 5.5], 0.6) == 6.0
    assert censored_quantile([5.0, 6.0, 7.0], [9.0, 9.0], 0.6) == 7.0


def test_equal_durations_finish_together() -> None:
    assert censored_quantile([4.0, 4.0, 4.0, 8.0], [], 0.5) == 4.0


# --------------------------------------------------------------------------- scouts and holds


def test_the_first_tasks_scout_at_the_interval_and_the_rest_hold() -> None:
    policy = new_policy()
    scouts = lead_scouts(policy)
    assert all(f.scout is not None and f.scout.lead and not f.hold for f in scouts)
    assert all(INTERVAL <= f.delay <= LATE for f in scouts)
    held = policy.first_poll(KEY, INTERVAL, 0.0)
    assert held.hold
    assert held.scout is None
    assert 0 < held.delay <= HOLD_RECHECK * INTERVAL


def test_lead_scouts_spread_their_polls_over_one_interval() -> None:
    policy = new_policy()
    firsts = lead_scouts(policy)
    staggers = [f.scout.stagger for f in firsts if f.scout is not None]
    assert sorted(staggers) == pytest.approx([INTERVAL * i / SCOUTS for i in range(SCOUTS)])
    # The extra wait comes after the first poll, once (the last scout's, the longest).
    scout = firsts[-1].scout
    assert scout is not None
    assert scout.stagger == pytest.approx(INTERVAL * (SCOUTS - 1) / SCOUTS)
    assert scout.saw_running(INTERVAL, 2.0) == 2.0 + scout.stagger
    assert scout.saw_running(2 * INTERVAL, 2.0) == 2.0


def test_a_held_task_as_old_as_the_quickest_scout_polls_soon() -> None:
    policy = new_policy()
    scouts = lead_scouts(policy)
    finish(policy, scouts[0], 6.0)  # sample: the middle of (4, 6], 5 s
    # While there is no estimate yet, the next task takes the place it left.
    refill = policy.first_poll(KEY, INTERVAL, 0.0)
    assert refill.scout is not None
    assert refill.scout.lead
    young = policy.first_poll(KEY, INTERVAL, 4.5, held=True)
    assert young.hold
    assert young.delay == pytest.approx(0.5)  # asks again when it is 5 s old
    old = policy.first_poll(KEY, INTERVAL, 6.5, held=True)
    assert not old.hold
    assert 0 <= old.delay <= HOLD_SPREAD * INTERVAL
    # Released, it feeds the estimate, without taking a scout's place.
    assert old.scout is not None
    assert not old.scout.lead
    assert policy.first_poll(KEY, INTERVAL, 0.0).hold


def test_with_an_estimate_a_held_task_aims_at_it() -> None:
    policy = new_policy()
    scouts = lead_scouts(policy)
    for first, duration in zip(scouts[:8], [6, 7, 8, 9, 10, 11, 12, 13], strict=True):
        finish(policy, first, float(duration))
    for first in scouts[8:]:
        assert first.scout is not None
        first.scout.saw_running(13.0, INTERVAL)
    expected = policy.expected_duration(KEY)
    assert expected is not None
    # Half the scouts are done: the estimate counts the running half, so it
    # is the FIRST_POLL_QUANTILE of all 16, not of the 8 quickest.
    assert expected == censored_quantile(
        [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0], [math.inf] * 8, FIRST_POLL_QUANTILE
    )
    assert expected > 5.0 + FIRST_POLL_QUANTILE * 7
    young = policy.first_poll(KEY, INTERVAL, 1.0, held=True)
    assert not young.hold
    assert expected - 1.0 <= young.delay <= expected * (1 + POLL_JITTER) - 1.0
    late = policy.first_poll(KEY, INTERVAL, 20.0, held=True)
    assert 0 <= late.delay <= HOLD_SPREAD * INTERVAL


def test_no_first_poll_comes_sooner_than_the_interval() -> None:
    policy = new_policy()
    scouts = lead_scouts(policy)
    finish(policy, scouts[0], 0.8)  # a task quicker than the interval
    for elapsed in (0.0, 0.5, 1.0, 1.5, 1.9):
        first = policy.first_poll(KEY, INTERVAL, elapsed, held=True)
        assert first.hold or elapsed + first.delay >= INTERVAL


def test_a_scout_that_leaves_unseen_done_frees_its_place() -> None:
    policy = new_policy()
    scouts = lead_scouts(policy)
    assert policy.first_poll(KEY, INTERVAL, 0.0).hold
    assert scouts[0].scout is not None
    scouts[0].scout.leave()  # failed, cancelled or timed out
    scouts[0].scout.leave()  # only the first call counts
    again = policy.first_poll(KEY, INTERVAL, 4.0, held=True)
    assert again.scout is not None
    assert again.scout.lead
    assert again.delay == 0.0  # older than the interval already
    assert policy.first_poll(KEY, INTERVAL, 0.0).hold


def test_a_task_held_too_long_scouts() -> None:
    policy = new_policy()
    lead_scouts(policy)
    near = policy.first_poll(KEY, INTERVAL, MAX_HOLD * INTERVAL - 0.3, held=True)
    assert near.hold
    assert near.delay == pytest.approx(0.3)
    over = policy.first_poll(KEY, INTERVAL, MAX_HOLD * INTERVAL, held=True)
    assert not over.hold
    assert over.delay == 0.0
    assert over.scout is not None


def test_released_tasks_feed_the_estimate_up_to_a_cap() -> None:
    policy = new_policy()
    scouts = lead_scouts(policy)
    finish(policy, scouts[0], 6.0)
    lead_scouts(policy, 1)  # the place it left
    released = [policy.first_poll(KEY, INTERVAL, 7.0, held=True) for _ in range(SCOUTED_TASKS)]
    assert all(not f.hold for f in released)
    reporting = [f.scout for f in released if f.scout is not None]
    assert len(reporting) == SCOUTED_TASKS - SCOUTS - 1
    assert not any(scout.lead for scout in reporting)


def test_the_scouts_hand_over_to_the_samples_once_all_are_gone() -> None:
    policy = new_policy()
    scouts = lead_scouts(policy)
    for first, duration in zip(scouts[:-1], range(6, 6 + SCOUTS - 1), strict=False):
        finish(policy, first, float(duration))
    # One scout still out: the model's samples are the quickest tasks so
    # far, so another resolution of that model does not trust them yet.
    assert policy.expected_duration((KEY[0], "4k")) is None
    finish(policy, scouts[-1], 30.0)
    assert policy.expected_duration((KEY[0], "4k")) is not None
    learned = policy.first_poll(KEY, INTERVAL, 0.0)
    assert learned.scout is None
    assert not learned.hold
    assert learned.delay > INTERVAL
