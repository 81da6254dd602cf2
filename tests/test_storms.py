"""Storms: batches through each fault profile, with the books checked (see tests/_storm.py).

A few hundred inputs per profile, on a fast clock; ``nox -s faults`` runs
thousands per profile with the journal. One storm each goes through the
blocking client, the SQLite journal, the request budget shared through a
real redis-server, and the Postgres journal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import banana_async as ba
from banana_async.testing import FAULT_PROFILES, FakeBananaServer, FakeClock, FaultProfileName

from ._servers import postgres_cluster, redis_server
from ._storm import API_KEY, StormReport, check_provider, storm, table


def _held(report: StormReport) -> None:
    """Every promise held; the table is in the message for a human if not."""
    assert report.problems == [], f"{table([report])}\n" + "\n".join(report.problems[:20])
    assert report.completed + sum(report.errors.values()) == report.inputs


@pytest.mark.parametrize("profile", FAULT_PROFILES)
async def test_a_storm_loses_nothing_and_creates_nothing_twice(profile: FaultProfileName) -> None:
    report = await storm(profile, 300, seed=11)
    _held(report)
    # The faults did strike: errors came, and the worst ones among them.
    assert sum(report.errors.values()) > 0
    if profile != "flaky":
        assert report.creates_sent > report.inputs  # 429s, sent again
    if profile == "hostile":
        assert report.unanswered > 0  # resets after processing: unconfirmed, not lost


async def test_a_journaled_storm_resumes_with_the_unconfirmed_reported(tmp_path: Path) -> None:
    report = await storm("hostile", 150, seed=12, journal=tmp_path / "storm.sqlite")
    _held(report)
    assert report.resumed_unconfirmed is not None
    assert report.resumed_unconfirmed >= report.unconfirmed > 0


async def test_a_storm_through_the_blocking_client() -> None:
    _held(await storm("flaky", 200, seed=13, sync=True, label="flaky, SyncBananaClient"))


async def test_a_storm_on_the_budget_shared_through_redis(tmp_path: Path) -> None:
    pytest.importorskip(
        "redis.asyncio", reason="the redis extra: pip install 'banana-async[redis]'"
    )
    with redis_server(tmp_path) as redis:
        # Hostile: its few 429s ask for no wait, as Redis keeps pauses in real time.
        report = await storm(
            "hostile",
            150,
            seed=14,
            rate_limit_url=redis.url,
            retry_after=0,
            label="hostile, Redis budget",
        )
    _held(report)


async def test_a_storm_on_the_postgres_journal() -> None:
    pytest.importorskip(
        "asyncpg", reason="the postgres extra: pip install 'banana-async[postgres]'"
    )
    with postgres_cluster() as url:
        report = await storm(
            "hostile", 100, seed=15, journal=url, batch="storm", label="hostile, Postgres journal"
        )
    _held(report)
    assert report.resumed_unconfirmed is not None


async def test_the_books_catch_a_create_sent_twice_and_a_task_lost() -> None:
    """The storms' checks fail when a promise breaks (here broken by hand)."""
    prompts = ["storm books prompt 0", "storm books prompt 1"]
    clock = FakeClock()
    async with (
        FakeBananaServer(api_key=API_KEY, duration=0.0, clock=clock.time) as server,
        ba.BananaClient(API_KEY, base_url=server.url, clock=clock) as client,
    ):
        done = await client.generate(prompts[0])
        await client.create(prompts[0])  # sent twice: a second task for input 0
        await client.create(prompts[1])  # created, then reported as a plain failure
    refused = ba.ServerError("refused", status_code=503)
    outcomes = {
        0: ba.Outcome(0, ba.GenerationRequest(prompts[0]), done),
        1: ba.Outcome(1, ba.GenerationRequest(prompts[1]), error=refused),
    }
    report = StormReport("broken by hand", 2)
    check_provider(report, server, prompts, outcomes)
    assert report.duplicate_creates == 1
    assert report.lost == 2  # input 0's second task, and input 1's
    assert len(report.problems) == 4  # the duplicate, two tasks for input 0, two lost
