"""Named, seeded fault profiles of the fake provider, and the fast clock."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random

import pytest

import banana_async as ba
from banana_async.testing import (
    FAULT_PROFILES,
    FakeBananaServer,
    FastClock,
    Fault,
    FaultProfile,
    FaultProfileName,
    RequestBudget,
    RequestKind,
    TaskScript,
    WeightedFault,
)

from .conftest import API_KEY

# Bounds on how often a test looks for what it waits for (not a time limit).
_LOOKS = 2000


async def _sequential(server: FakeBananaServer, count: int) -> list[Fault | None]:
    """Send ``count`` creates and queries one after another; the faults that struck them."""
    async with ba.BananaClient(
        API_KEY, base_url=server.url, max_retries=0, clock=FastClock(speed=1000)
    ) as client:
        for i in range(count):
            try:
                task = await client.create(f"prompt {i}")
                await client.get(task)
            except ba.BananaError:
                pass
    return [r.fault for r in server.requests]


async def test_one_seed_gives_one_sequence_of_faults() -> None:
    profile = FaultProfile.named("flaky", slow=0.0)
    runs = []
    for seed in (7, 7, 8):
        async with FakeBananaServer(api_key=API_KEY, faults=profile, seed=seed) as server:
            assert server.seed == seed
            runs.append(await _sequential(server, 40))
    first, again, other = runs
    assert first == again
    assert any(fault is not None for fault in first)
    assert first != other


def test_a_draw_takes_two_numbers_struck_or_not() -> None:
    profile = FaultProfile.named("hostile")
    rng, twin = random.Random(3), random.Random(3)
    for kind in ["create", "query", "image", "create"] * 50:
        profile.draw(kind, rng)  # type: ignore[arg-type]
        twin.random(), twin.random()
        assert rng.getstate() == twin.getstate()
    assert profile.draw("other", rng) is None


# What 200 draws of each kind from random.Random(2026) pick, per named
# profile: the place in the mix of each fault that struck. Pinned so that a
# seed keeps giving the same faults when the tables are rewritten.
_PINNED_PICKS: dict[tuple[FaultProfileName, RequestKind], str] = {
    ("flaky", "create"): "556062300121534",
    ("flaky", "query"): "545051200110533",
    ("overloaded", "create"): (
        "31351323204025425053132052310345226341315100025530301535035203513353"
    ),
    ("overloaded", "query"): "202301210302323032120312332423120310001320201232310232232",
    ("hostile", "create"): "51572506660763508356795622005660527683156565",
    ("hostile", "query"): "41561405550552406245674511003550416562145455",
}


@pytest.mark.parametrize(("name", "kind"), list(_PINNED_PICKS))
def test_a_seed_gives_the_same_faults_from_release_to_release(
    name: FaultProfileName, kind: RequestKind
) -> None:
    profile = FaultProfile.named(name)
    mix = _mix(profile, kind)
    rng = random.Random(2026)
    struck = [profile.draw(kind, rng) for _ in range(200)]
    picks = "".join(str(mix.index(fault)) for fault in struck if fault is not None)
    assert picks == _PINNED_PICKS[name, kind]


def _mix(profile: FaultProfile, kind: str) -> list[Fault]:
    return [item.fault for item in getattr(profile, f"{kind}_faults")]


def _has(faults: list[Fault], **fields: object) -> bool:
    return any(all(getattr(f, k) == v for k, v in fields.items()) for f in faults)


def test_the_named_profiles_hold_what_the_docs_say() -> None:
    flaky = FaultProfile.named("flaky", stall=2.0, slow=0.1)
    overloaded = FaultProfile.named("overloaded", stall=2.0, slow=0.1)
    hostile = FaultProfile.named("hostile", stall=2.0, slow=0.1)
    assert (flaky.name, overloaded.name, hostile.name) == FAULT_PROFILES
    # flaky: 5xx, 429 with and without Retry-After, resets before and after
    # processing, slow answers, an unknown status word; never a long stall.
    creates = _mix(flaky, "create")
    assert _has(creates, action="respond", status_code=503)
    assert _has(creates, action="respond", status_code=429, headers={"Retry-After": "1"})
    assert _has(creates, action="respond", status_code=429, headers={})
    assert _has(creates, action="reset", process=False)
    assert _has(creates, action="reset", process=True)
    assert _has(creates, action="stall", seconds=0.1)
    assert _has(_mix(flaky, "query"), action="status_word")
    assert not _has(creates + _mix(flaky, "query"), action="stall", seconds=2.0)
    # overloaded: mostly 429s, with stalls past the client's timeout.
    assert _has(_mix(overloaded, "create"), action="stall", seconds=2.0)
    assert _has(_mix(overloaded, "query"), action="stall", seconds=2.0)
    assert _has(_mix(overloaded, "create"), status_code=429, headers={"Retry-After": "2"})
    # hostile: HTML and malformed bodies, odd words, resets after processing.
    creates = _mix(hostile, "create")
    assert _has(creates, content_type="text/html; charset=utf-8")
    assert _has(creates, action="respond", status_code=200, payload=b'{"id": "tr')
    assert _has(creates, action="reset", process=True)
    assert _has(creates, action="edit", changes={"status": "hatching"})
    assert _has(_mix(hostile, "query"), action="status_word", word="PENDING_REVIEW")
    # None of them strikes image downloads, and none fails a task outright.
    for profile in (flaky, overloaded, hostile):
        assert profile.image_rate == 0.0
        for fault in _mix(profile, "create") + _mix(profile, "query"):
            assert fault.status_code not in (400, 401, 403, 404)
            assert not (fault.process and fault.action == "respond")


def test_rates_are_what_they_say() -> None:
    profile = FaultProfile.named("overloaded")
    rng = random.Random(0)
    struck = sum(profile.draw("create", rng) is not None for _ in range(10_000))
    assert 3200 < struck < 3800  # 0.35 of 10 000, well inside 5 sigma


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault profile 'gentle'"):
        FaultProfile.named("gentle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="create_rate must be between 0 and 1"):
        FaultProfile("x", create_rate=1.5, create_faults=[Fault.reset()])
    with pytest.raises(ValueError, match="query_faults is empty"):
        FaultProfile("x", query_rate=0.5)
    with pytest.raises(ValueError, match="only applies to queries"):
        FaultProfile("x", create_faults=[Fault.status_word("odd")])
    with pytest.raises(ValueError, match="image downloads take no"):
        FaultProfile("x", image_faults=[Fault.edit({"a": 1})])
    with pytest.raises(ValueError, match="weight must be > 0"):
        WeightedFault(Fault.reset(), 0)
    with pytest.raises(ValueError, match="stall must be >= 0"):
        FaultProfile.named("flaky", stall=-1)
    with pytest.raises(ValueError, match="retry_after must be >= 0"):
        FaultProfile.named("flaky", retry_after=-1)


async def test_the_profile_can_be_set_named_and_lifted() -> None:
    server = FakeBananaServer(faults="hostile")
    assert server.faults == FaultProfile.named("hostile")
    server.faults = None
    assert server.faults is None
    with pytest.raises(ValueError, match="unknown fault profile"):
        server.faults = "nope"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="faults must be a FaultProfile"):
        server.faults = 3  # type: ignore[assignment]
    assert isinstance(server.seed, int)  # drawn, so that a failure can be repeated


def _always(*faults: Fault) -> FaultProfile:
    """Every create struck, by these faults in turn (at random)."""
    return FaultProfile("always", create_rate=1.0, create_faults=faults)


async def test_queued_faults_and_the_budget_come_first() -> None:
    async with FakeBananaServer(api_key=API_KEY, faults=_always(Fault.status(503))) as server:
        server.inject(Fault.status(418), on="create")
        server.budget = RequestBudget(rate=0.001, burst=1)
        for budget in (server.budget, None):
            server.budget = budget
            # A client each: a 429 pauses every later request of its client.
            for _ in range(2 if budget else 1):
                async with ba.BananaClient(API_KEY, base_url=server.url, max_retries=0) as client:
                    with pytest.raises(ba.APIStatusError):
                        await client.create("a cat")
    first, second, third = server.requests
    assert first.fault == Fault.status(418)  # queued: before the profile
    assert (second.rate_limited, second.fault) == (True, None)  # refused: no draw
    assert (third.rate_limited, third.fault) == (False, Fault.status(503))


async def test_a_reset_after_processing_leaves_a_task_the_client_never_saw() -> None:
    async with (
        FakeBananaServer(api_key=API_KEY, faults=_always(Fault.reset(process=True))) as server,
        ba.BananaClient(API_KEY, base_url=server.url) as client,
    ):
        with pytest.raises(ba.APIConnectionError) as info:
            await client.create("a cat")
    assert info.value.request_sent  # and so it was not sent again
    assert server.count("create") == 1
    (record,) = server.requests
    assert record.answered is False
    assert record.fault == Fault.reset(process=True)
    assert server.unanswered_creates() == [record.task_id] == list(server.tasks)


async def test_a_reset_before_processing_creates_nothing() -> None:
    async with (
        FakeBananaServer(api_key=API_KEY, faults=_always(Fault.reset())) as server,
        ba.BananaClient(API_KEY, base_url=server.url) as client,
    ):
        with pytest.raises(ba.APIConnectionError):
            await client.create("a cat")
    assert server.tasks == {}
    assert server.unanswered_creates() == []
    assert server.requests[0].answered is False


async def test_a_stalled_create_the_client_gave_up_on_is_created_unseen() -> None:
    async with FakeBananaServer(api_key=API_KEY, faults=_always(Fault.stall(0.3))) as server:
        async with ba.BananaClient(API_KEY, base_url=server.url, timeout=0.05) as client:
            with pytest.raises(ba.APITimeoutError) as info:
                await client.create("a cat")
        assert info.value.request_sent
        for _ in range(_LOOKS):  # the stall ends on the server's own time
            if server.tasks:
                break
            await asyncio.sleep(0.01)
        (task_id,) = server.tasks
        assert server.unanswered_creates() == [task_id]


async def test_a_slow_answer_inside_the_timeout_is_answered() -> None:
    async with (
        FakeBananaServer(api_key=API_KEY, faults=_always(Fault.stall(0.01))) as server,
        ba.BananaClient(API_KEY, base_url=server.url) as client,
    ):
        task = await client.create("a cat")
    assert server.unanswered_creates() == []
    assert server.requests[0].answered
    assert list(server.tasks) == [task.id]


async def test_every_fault_of_the_profiles_leaves_a_wait_to_finish() -> None:
    """A wait sails through each query fault of every profile, twice in a row."""
    faults = {
        item.fault
        for name in FAULT_PROFILES
        for item in FaultProfile.named(name, stall=0.2, slow=0.01).query_faults
    }
    clock = FastClock(speed=1000)
    async with (
        FakeBananaServer(api_key=API_KEY, clock=clock.time) as server,
        ba.BananaClient(
            API_KEY, base_url=server.url, clock=clock, timeout=0.1, wait_timeout=3600
        ) as client,
    ):
        for fault in faults:
            server.plan(TaskScript(queries=2))
            task = await client.create("a cat")
            server.inject(fault, on="query", times=2)  # a reset needs two (see Fault.reset)
            assert (await client.wait(task)).ok, fault
    assert server.pending_faults == 0


async def test_the_fast_clock_speeds_up_real_time() -> None:
    clock = FastClock(speed=1000)
    start = clock.time()
    await asyncio.gather(*(clock.sleep(5.0) for _ in range(100)))  # 5 ms, all at once
    assert clock.time() - start >= 5.0
    assert clock.sleeps == 100
    with pytest.raises(ValueError, match="speed must be > 0"):
        FastClock(speed=0)
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        await clock.sleep(-1)


async def test_generate_many_through_a_profile_on_the_fast_clock() -> None:
    """What the docs show: a user's own batch test through ``faults="flaky"``."""
    clock = FastClock(speed=500)
    async with (
        FakeBananaServer(
            api_key=API_KEY, duration=4.0, clock=clock.time, faults="flaky", seed=1
        ) as server,
        ba.BananaClient(API_KEY, base_url=server.url, clock=clock) as client,
    ):
        outcomes = [o async for o in client.generate_many([f"p{i}" for i in range(60)])]
    assert sorted(o.index for o in outcomes) == list(range(60))
    kinds = collections.Counter(type(o.error).__name__ for o in outcomes if not o.ok)
    assert set(kinds) <= {"ServerError", "APIConnectionError"}
    completed = {o.task.id for o in outcomes if o.ok and o.task is not None}
    assert completed == set(server.tasks) - set(server.unanswered_creates())


@pytest.mark.parametrize("banana_faults", ["flaky"])
async def test_the_plugin_runs_a_test_through_a_profile(
    banana_server: FakeBananaServer, banana_client: ba.BananaClient
) -> None:
    assert banana_server.faults == FaultProfile.named("flaky")
    assert banana_server.seed == 0
    for i in range(30):
        with contextlib.suppress(ba.BananaError):  # a 5xx or a reset on the create
            await banana_client.generate(f"a cat {i}")
    assert any(r.fault is not None for r in banana_server.requests)


async def test_the_plugin_strikes_nothing_by_default(banana_server: FakeBananaServer) -> None:
    assert banana_server.faults is None
