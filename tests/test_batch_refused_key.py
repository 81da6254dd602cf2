"""A batch whose key the provider refuses (401) stops sending creates with it."""

from __future__ import annotations

from pathlib import Path

import banana_async as ba
from banana_async.testing import FakeBananaServer, Fault

from .conftest import API_KEY


async def test_a_refused_key_stops_the_creates_and_says_so(live: FakeBananaServer) -> None:
    async with ba.BananaClient("sk-not-the-right-key", base_url=live.url) as client:
        outcomes = [
            o async for o in client.generate_many([f"p{i}" for i in range(6)], concurrency=1)
        ]
    # One create told the batch the key is refused; the others were not sent.
    assert live.count("create") == 1
    assert [o.index for o in outcomes] == list(range(6))
    for outcome in outcomes:
        assert isinstance(outcome.error, ba.AuthenticationError)
        assert outcome.error.status_code == 401
        assert "401" in str(outcome.error)
    for outcome in outcomes[1:]:
        assert outcome.error is not None
        assert f"input {outcome.index} was not sent" in str(outcome.error)
        # What to do about it.
        assert "Check the key (BANANA_API_KEY, or api_key=) and run the batch again" in str(
            outcome.error
        )
        assert "sk-not-the-right-key" not in str(outcome.error)


async def test_inputs_not_sent_for_a_refused_key_are_created_on_the_next_run(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    prompts = [f"p{i}" for i in range(4)]
    async with ba.BananaClient("sk-not-the-right-key", base_url=live.url) as client:
        first = [o async for o in client.generate_many(prompts, concurrency=1, journal=journal)]
    assert not any(o.ok for o in first)
    with ba.Journal.open(journal) as opened:
        entries = list(opened.entries())
    # Each input not sent is recorded as such, with its request.
    assert [e.state for e in entries] == [ba.EntryState.ERROR] * 4
    assert [e.request.prompt if e.request else None for e in entries] == prompts
    async with ba.BananaClient(API_KEY, base_url=live.url, poll_interval=0.02) as client:
        again = [o async for o in client.generate_many(prompts, concurrency=2, journal=journal)]
    assert all(o.ok and not o.from_journal for o in again)
    assert live.count("create") == 1 + 4


async def test_a_403_does_not_stop_the_batch(live: FakeBananaServer) -> None:
    # A 403 may refuse one request (a model the key may not use), not the key.
    live.inject(Fault.status(403), on="create", times=1)
    async with ba.BananaClient(API_KEY, base_url=live.url, poll_interval=0.02) as client:
        outcomes = [o async for o in client.generate_many(["a", "b", "c"], concurrency=1)]
    assert [o.ok for o in outcomes] == [False, True, True]
    assert live.count("create") == 3
