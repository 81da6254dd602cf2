"""generate_many with a journal: resume without losing or double-paying a task."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import banana_async as ba
from banana_async._logging import RAISED_LATER
from banana_async.journal import EntryState, Journal
from banana_async.testing import FakeBananaServer, Fault, TaskScript

from .conftest import API_KEY, live_client


async def _run(client: ba.BananaClient, inputs: list[str], **kwargs: Any) -> dict[int, ba.Outcome]:
    return {o.index: o async for o in client.generate_many(inputs, **kwargs)}


def _creates_per_prompt(server: FakeBananaServer) -> collections.Counter[str]:
    return collections.Counter(r.json["prompt"] for r in server.requests if r.kind == "create")


PROMPTS = [f"prompt {i}" for i in range(8)]


async def test_a_finished_batch_replays_without_http(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    async with live_client(live) as client:
        first = await _run(client, PROMPTS, journal=journal)
        sent = len(live.requests)
        second = await _run(client, PROMPTS, journal=journal)
    assert all(o.ok and not o.from_journal for o in first.values())
    assert len(live.requests) == sent  # no HTTP request at all
    assert sorted(second) == list(range(8))
    for index, outcome in second.items():
        assert outcome.from_journal
        assert outcome.task == first[index].task
        assert outcome.request == first[index].request


async def test_created_tasks_are_polled_not_created_again(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    live.script_for = lambda body: TaskScript(duration=None if body["prompt"] < "prompt 4" else 0)
    journal = tmp_path / "batch.sqlite"
    async with live_client(live) as client:
        first = await _run(client, PROMPTS, journal=journal, timeout=0.3)
        stuck = [o for o in first.values() if isinstance(o.error, ba.TaskTimeoutError)]
        assert len(stuck) == 4
        for outcome in stuck:
            assert outcome.request is not None
            assert outcome.request.prompt == PROMPTS[outcome.index]
            assert outcome.task is not None
            live.finish(outcome.task.id)
        queries_before = live.count("query")
        second = await _run(client, PROMPTS, journal=journal)
    assert all(o.ok for o in second.values())
    assert sum(not o.from_journal for o in second.values()) == 4
    assert live.count("query") - queries_before == 4  # one poll each, no create
    assert set(_creates_per_prompt(live).values()) == {1}
    with Journal.open(journal) as j:
        assert j.counts()[EntryState.COMPLETED] == 8


async def test_inputs_that_created_nothing_are_tried_again(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.inject(Fault.status(400, body='{"error": "try later"}'), on="create")
    async with live_client(live) as client:
        first = await _run(client, PROMPTS[:1], journal=journal)
        assert isinstance(first[0].error, ba.BadRequestError)
        second = await _run(client, PROMPTS[:1], journal=journal)
    assert second[0].ok
    assert _creates_per_prompt(live)[PROMPTS[0]] == 2  # a 400 created nothing


@pytest.mark.parametrize(
    "fault",
    [Fault.status(500, process=True), Fault.reset(process=True), Fault.stall(5, process=True)],
    ids=["500", "reset", "read-timeout"],
)
async def test_unconfirmed_creates_are_reported_not_resent(
    live: FakeBananaServer, tmp_path: Path, fault: Fault
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.inject(fault, on="create")
    async with live_client(live, timeout=0.5) as client:
        first = await _run(client, PROMPTS[:1], journal=journal)
        assert first[0].error is not None
        second = await _run(client, PROMPTS[:1], journal=journal)
        assert isinstance(second[0].error, ba.UnconfirmedCreateError)
        assert second[0].from_journal
        # Which input, with its request, and what the caller may do about it.
        assert second[0].error.index == 0
        assert first[0].request is not None
        assert second[0].request == first[0].request
        assert str(second[0].error) == (
            "input 0: a create was sent in an earlier run but its answer never confirmed a "
            "task; the provider may have created (and billed) one. It is not sent again "
            "unless resend_unconfirmed=True"
        )
        assert _creates_per_prompt(live)[PROMPTS[0]] == 1
        assert len(live.tasks) == 1  # the provider did create (and bill) it
        third = await _run(client, PROMPTS[:1], journal=journal, resend_unconfirmed=True)
    assert third[0].ok
    assert _creates_per_prompt(live)[PROMPTS[0]] == 2


async def test_a_journal_of_another_batch_is_refused(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    async with live_client(live) as client:
        await _run(client, PROMPTS, journal=journal)
        sent = len(live.requests)
        with pytest.raises(ba.JournalError, match="another batch") as info:
            await _run(client, ["something else", *PROMPTS[1:]], journal=journal)
    assert len(live.requests) == sent
    assert info.value.path == str(journal)  # which journal it is, for the message's reader


async def test_downloads_resume_too(live: FakeBananaServer, tmp_path: Path) -> None:
    journal = tmp_path / "batch.sqlite"
    out = tmp_path / "out"
    async with live_client(live) as client:
        first = await _run(client, PROMPTS[:4], journal=journal, download_to=out)
        sent = len(live.requests)
        again = await _run(client, PROMPTS[:4], journal=journal, download_to=out)
        assert len(live.requests) == sent
        assert all(o.from_journal and o.path == first[o.index].path for o in again.values())
        lost = first[2].path
        assert lost is not None
        lost.unlink()
        third = await _run(client, PROMPTS[:4], journal=journal, download_to=out)
    assert third[2].path == lost
    assert lost.exists()
    new = live.requests[sent:]
    assert [r.kind for r in new] == ["image"]  # just the missing file, nothing else


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import banana_async as ba

    async def main(url: str, journal: str) -> None:
        prompts = [f"prompt {i:02d}" for i in range(int(sys.argv[3]))]
        async with ba.BananaClient("KEY", base_url=url, poll_interval=0.02) as client:
            async for o in client.generate_many(prompts, concurrency=8, journal=journal):
                print(o.index, "ok" if o.ok else type(o.error).__name__, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
).replace("KEY", API_KEY)


async def test_sigkill_mid_batch_loses_nothing(live: FakeBananaServer, tmp_path: Path) -> None:
    count = 24
    prompts = [f"prompt {i:02d}" for i in range(count)]
    journal = tmp_path / "batch.sqlite"

    def script(body: dict[str, Any]) -> TaskScript:
        number = int(body["prompt"].split()[1])
        # Every fifth task hangs: at the kill those are CREATED, mid-poll. With
        # the stalled create below that holds 6 of the child's 8 slots.
        return TaskScript(duration=None if number % 5 == 1 else 0.05)

    live.script_for = script
    # The very first create is processed and then hangs: at the kill it is the
    # create "in flight at that very moment".
    live.inject(Fault.stall(120, process=True), on="create")

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        live.url,
        str(journal),
        str(count),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    printed: list[str] = []
    try:
        assert child.stdout is not None
        async with asyncio.timeout(60):
            while len(printed) < 6:
                line = await child.stdout.readline()
                assert line, "the child exited early"
                printed.append(line.decode().strip())
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    done_before = {int(line.split()[0]) for line in printed}

    # The tasks that were mid-poll finish while nobody watches, and tasks
    # created from now on finish by themselves.
    live.script_for = None
    for task in list(live.tasks.values()):
        if task.finished_at is None:
            live.finish(task.id)
    creates_before = _creates_per_prompt(live)

    async with live_client(live) as client:
        resumed = await _run(client, prompts, journal=journal, concurrency=4, timeout=30)

    assert sorted(resumed) == list(range(count))  # an outcome for every input
    for index in done_before:
        assert resumed[index].from_journal
        assert resumed[index].ok
    unconfirmed = {i for i, o in resumed.items() if not o.ok}
    assert 0 in unconfirmed  # the create that hung at the provider
    for index in unconfirmed:
        # Only creates in flight at the kill, reported rather than sent again.
        assert isinstance(resumed[index].error, ba.UnconfirmedCreateError)
        assert resumed[index].task is None
    creates = _creates_per_prompt(live)
    assert set(creates.values()) == {1}  # no prompt was ever created twice
    # Every task the provider created is in an outcome, except the unconfirmed.
    by_prompt = {t.body["prompt"]: t.id for t in live.tasks.values()}
    for index, outcome in resumed.items():
        if index not in unconfirmed:
            assert outcome.task is not None
            assert outcome.task.id == by_prompt[prompts[index]]
    # An unconfirmed create may or may not have reached the provider.
    assert count - len(unconfirmed) <= len(live.tasks) <= count
    # Tasks created before the kill were polled, not created again.
    for prompt, n in creates_before.items():
        assert creates[prompt] == n
    with contextlib.suppress(ProcessLookupError):
        child.kill()


async def test_an_input_recorded_valid_and_now_invalid_is_another_batch(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    async with live_client(live) as client:
        await _run(client, ["a", "b"], journal=journal)
        with pytest.raises(ba.JournalError, match="another batch"):
            await _run(client, ["a", "   "], journal=journal)


async def test_a_corrected_invalid_input_is_created(live: FakeBananaServer, tmp_path: Path) -> None:
    journal = tmp_path / "batch.sqlite"
    async with live_client(live) as client:
        first = await _run(client, ["a", "   "], journal=journal)
        assert isinstance(first[1].error, ba.InvalidRequestError)
        second = await _run(client, ["a", "b"], journal=journal)
    assert second[0].from_journal
    assert second[1].ok
    assert not second[1].from_journal


async def test_timeouts_and_download_failures_are_noted(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.script_for = lambda body: TaskScript(duration=None if body["prompt"] == "slow" else 0)
    live.inject(Fault.status(404), on="image")
    async with live_client(live) as client:
        outcomes = await _run(
            client, ["slow", "fast"], journal=journal, timeout=0.2, download_to=tmp_path / "o"
        )
    assert isinstance(outcomes[0].error, ba.TaskTimeoutError)
    assert isinstance(outcomes[1].error, ba.NotFoundError)
    with Journal.open(journal) as j:
        slow, fast = j.get(0), j.get(1)
    assert slow is not None
    assert slow.state is EntryState.CREATED
    assert slow.error_type == "TaskTimeoutError"
    assert fast is not None
    assert fast.state is EntryState.COMPLETED
    assert fast.error_type == "NotFoundError"
    assert fast.path is None


async def test_a_broken_journal_stops_the_batch_at_once(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    live.script_for = lambda body: TaskScript(duration=0.2)
    journal = Journal.open(tmp_path / "batch.sqlite")
    async with live_client(live) as client:
        batch = client.generate_many([f"p{i}" for i in range(6)], concurrency=2, journal=journal)
        async with contextlib.aclosing(batch):
            await asyncio.sleep(0.05)  # two creates recorded, both polling
            journal.close()
            async with asyncio.timeout(10):
                with pytest.raises(ba.JournalError) as info:
                    _ = [o async for o in batch]
    assert info.value.path == journal.path
    assert info.value.unrecorded == {}
    assert "is closed" in str(info.value)
    assert live.count("create") == 0  # the journal failed before the first create
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("banana_async-batch")] == []


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
async def test_an_interrupted_batch_leaves_no_unsent_create_as_sending(
    live: FakeBananaServer, tmp_path: Path, retry_after: bool
) -> None:
    # A tight budget: most creates wait for their turn (or for the next one
    # after a 429) when the batch is stopped. Only a create that went on the
    # wire may be found "sending" (unconfirmed) on resume; one that never
    # left the machine, or was refused with 429, is safe to send again.
    live.budget = ba.testing.RequestBudget(rate=5.0, burst=1.0, retry_after=retry_after)
    live.script_for = lambda body: TaskScript(duration=None)  # never ends
    journal = tmp_path / "batch.sqlite"
    prompts = [f"prompt {i}" for i in range(30)]
    async with live_client(live) as client:
        outcomes = client.generate_many(prompts, concurrency=30, journal=journal, timeout=60.0)
        reader = asyncio.ensure_future(anext(outcomes, None))
        # The fake server has no event to wait on: poll it.
        while live.count("create") - live.count_rate_limited("create") < 6:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await outcomes.aclose()
    creates = [r for r in live.requests if r.kind == "create"]
    accepted = {r.json["prompt"] for r in creates if not r.rate_limited}
    # The last request of each prompt that reached the provider at all.
    last = {r.json["prompt"]: r.rate_limited for r in creates}
    with Journal.open(journal) as opened:
        entries = list(opened.entries())
    sending = [e for e in entries if e.state in (EntryState.SENDING, EntryState.UNCONFIRMED)]
    for entry in sending:
        assert entry.request is not None
        prompt = entry.request.prompt
        # It reached the provider, and not only to be refused with 429.
        assert prompt in last, f"{prompt!r} never left the machine but is {entry.state}"
        assert not last[prompt] or prompt in accepted, f"{prompt!r} was refused with 429"
    created = {e.request.prompt for e in entries if e.state is EntryState.CREATED and e.request}
    assert created <= accepted
    # Creates were still waiting when it stopped (else this test proves nothing).
    refused = [e for e in entries if e.state is EntryState.ERROR]
    assert len(last) < len(prompts) or refused


async def test_a_task_failed_in_an_earlier_run_comes_back_with_its_request_and_task(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.script_for = lambda body: (
        TaskScript(outcome="fail", error="refused by the filter")
        if body["prompt"] == PROMPTS[1]
        else None
    )
    async with live_client(live) as client:
        first = await _run(client, PROMPTS[:3], journal=journal)
        sent = len(live.requests)
        again = await _run(client, PROMPTS[:3], journal=journal)
    assert len(live.requests) == sent  # replayed from the journal alone
    failed = again[1]
    assert failed.from_journal
    assert isinstance(failed.error, ba.TaskFailedError)
    assert "refused by the filter" in str(failed.error)
    # The caller can tell which input failed and which task it was.
    assert failed.request == first[1].request
    assert failed.task is not None
    assert failed.task == first[1].task
    assert failed.task.status is ba.TaskStatus.FAILED
    assert failed.error.task == failed.task


class _ReprFails:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _LongRepr:
    def __repr__(self) -> str:
        return "L" * 5000


async def test_the_journal_keeps_what_each_failed_input_was_and_why(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.inject(Fault.status(500, process=True), on="create")
    live.inject(Fault.status(400, body='{"error": "try later"}'), on="create")
    inputs: list[Any] = ["five hundred", "four hundred", 42, _ReprFails(), _LongRepr()]
    async with live_client(live) as client:
        outcomes = await _run(client, inputs, journal=journal, concurrency=1)
    assert sorted(outcomes) == list(range(5))
    with Journal.open(journal) as opened:
        entries = {e.index: e for e in opened.entries()}
    # A 500 may have created a task: unconfirmed, with the answer that says so.
    assert entries[0].state is EntryState.UNCONFIRMED
    assert entries[0].error_type == type(outcomes[0].error).__name__ == "ServerError"
    assert entries[0].error is not None
    assert "500" in entries[0].error
    # A 400 created nothing: an error, with the provider's reason.
    assert entries[1].state is EntryState.ERROR
    assert entries[1].request is not None
    assert entries[1].request.prompt == "four hundred"
    assert entries[1].error_type == type(outcomes[1].error).__name__
    assert entries[1].error is not None
    assert "try later" in entries[1].error
    # Inputs that are no prompt: what they were, as text (capped at 1,000 characters).
    assert [entries[i].request for i in (2, 3, 4)] == [None, None, None]
    assert entries[2].raw_input == "42"
    assert entries[3].raw_input == "<_ReprFails object>"
    assert entries[4].raw_input == "L" * 1000


async def test_a_journal_that_breaks_under_creates_on_the_wire_lists_every_created_id(
    live: FakeBananaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Three creates on the wire when the journal breaks: one creates its task,
    # one creates a task whose id the answer carries beside an error (a task
    # id no client can use), one is refused (409: nothing created).
    async with live_client(live) as client:
        await client.create("takes the id first")
    (taken,) = live.tasks
    scripts = {
        "created": TaskScript(duration=None),
        "id beside an error": TaskScript(task_id="odd\ud800", duration=None),
        "refused": TaskScript(task_id=taken),
    }
    live.script_for = lambda body: scripts[body["prompt"]]
    live.inject(Fault.stall(0.3, process=True), on="create", times=3)
    journal = Journal.open(tmp_path / "batch.sqlite")
    async with live_client(live) as client:
        batch = client.generate_many(list(scripts), concurrency=3, journal=journal)
        async with contextlib.aclosing(batch):
            first = asyncio.ensure_future(anext(batch))
            # The fake server has no event to wait on: poll it.
            while live.count("create") < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            journal.close()  # the three answers are still on their way
            with pytest.raises(ba.JournalError) as info:
                await first
    created = next(t.id for t in live.tasks.values() if t.body["prompt"] == "created")
    # Every task the provider created in this batch is listed, and nothing else.
    assert info.value.unrecorded == {0: created, 1: "odd\ud800"}
    assert info.value.path == journal.path
    assert created in str(info.value)
    lost = [r.getMessage() for r in caplog.records if "is not in the journal" in r.getMessage()]
    assert sorted(lost) == [
        f"input 0: task {created} was created but is not in the journal; note its id",
        "input 1: task odd\ud800 was created but is not in the journal; note its id",
    ]
    # The failure is logged once as it happens, marked for the command line,
    # which prints the JournalError instead.
    (failed,) = [r for r in caplog.records if "creating no more tasks" in r.getMessage()]
    assert failed.levelno == logging.ERROR
    assert getattr(failed, RAISED_LATER) is True
    message = failed.getMessage()
    assert message.startswith(f"journal {journal.path} failed (")
    assert message.endswith("closed); creating no more tasks")


async def test_a_wait_ended_by_an_error_keeps_its_task_and_resumes_by_polling(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.inject(Fault.status(404, body='{"error": {"message": "no such task"}}'), on="query")
    async with live_client(live) as client:
        first = await _run(client, PROMPTS[:1], journal=journal)
        assert sorted(first) == [0]
        outcome = first[0]
        assert isinstance(outcome.error, ba.NotFoundError)
        assert outcome.request is not None
        assert outcome.request.prompt == PROMPTS[0]
        assert outcome.task is not None
        assert outcome.task.id in live.tasks
        with Journal.open(journal) as opened:
            (entry,) = opened.entries()
        # Still created (a resumed run polls it again), with the error kept.
        assert entry.state is EntryState.CREATED
        assert entry.task_id == outcome.task.id
        assert entry.error_type == "NotFoundError"
        assert entry.error is not None
        assert "no such task" in entry.error
        again = await _run(client, PROMPTS[:1], journal=journal)
    assert again[0].ok
    assert again[0].task is not None
    assert again[0].task.id == outcome.task.id
    assert live.count("create") == 1
