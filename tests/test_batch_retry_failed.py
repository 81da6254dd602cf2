"""``generate_many(retry_failed=True)``: failed tasks of a journaled batch are created again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import banana_async as ba
from banana_async.testing import FakeBananaServer, TaskScript
from tests.conftest import API_KEY

PROMPTS = ["a red fox", "a blue whale", "a green parrot"]


def whale_fails(body: dict[str, Any]) -> TaskScript:
    if body.get("prompt") == "a blue whale":
        return TaskScript(duration=0.02, outcome="fail", error="content policy violation")
    return TaskScript(duration=0.02)


async def run(
    server: FakeBananaServer, journal: Path, *, retry_failed: bool = False
) -> list[ba.Outcome]:
    async with ba.BananaClient(API_KEY, base_url=server.url, poll_interval=0.02) as client:
        batch = client.generate_many(PROMPTS, journal=journal, retry_failed=retry_failed)
        outcomes = [outcome async for outcome in batch]
    return sorted(outcomes, key=lambda o: o.index)


async def test_retry_failed_creates_only_the_failed_inputs_again(tmp_path: Path) -> None:
    journal = tmp_path / "batch.sqlite"
    async with FakeBananaServer(api_key=API_KEY) as server:
        server.script_for = whale_fails
        first = await run(server, journal)
        assert [o.ok for o in first] == [True, False, True]
        failed_id = first[1].task.id if first[1].task is not None else None

        again = await run(server, journal)  # without the flag: from the journal
        assert all(o.from_journal for o in again)
        assert isinstance(again[1].error, ba.TaskFailedError)
        assert server.count("create") == 3

        server.script_for = None
        retried = await run(server, journal, retry_failed=True)
        assert server.count("create") == 4
        assert [o.ok for o in retried] == [True, True, True]
        assert [o.from_journal for o in retried] == [True, False, True]
        assert retried[1].task is not None
        assert retried[1].task.id != failed_id  # a new task

    with ba.Journal.open(journal) as opened:
        assert opened.counts()[ba.EntryState.COMPLETED] == 3
        assert opened.counts().get(ba.EntryState.FAILED, 0) == 0
