"""generate_many against careless callers, inputs and providers (issue #6), over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, Fault, TaskScript

from .conftest import API_KEY, batch_tasks, live_client

# -- 9. leaving early stops the creates -----------------------------------------------


async def test_a_consumer_that_stopped_asking_buys_no_more_tasks(live: FakeBananaServer) -> None:
    # Distinct durations: no two tasks finish in the same instant.
    durations = iter(0.05 + 0.013 * i for i in range(1000))
    live.script_for = lambda body: TaskScript(duration=next(durations))
    async with live_client(live) as client:
        outcomes = client.generate_many([f"p{i}" for i in range(100)], concurrency=10)
        async for _first in outcomes:
            break  # ...while `outcomes` is still referenced
        await asyncio.sleep(0.5)  # every task in flight has finished by now
        created = live.count("create")
        await asyncio.sleep(0.5)
        assert live.count("create") == created  # nothing creeps on
        # The ten in flight when the first finished, and at most the one
        # create that reading it paid for.
        assert created <= 11
        await outcomes.aclose()
    assert batch_tasks() == []


async def test_a_slow_consumer_still_gets_every_outcome(live: FakeBananaServer) -> None:
    async with live_client(live) as client:
        seen = []
        async for outcome in client.generate_many([f"p{i}" for i in range(20)], concurrency=4):
            await asyncio.sleep(0.03)  # slower than the tasks
            seen.append(outcome.index)
    assert sorted(seen) == list(range(20))
    assert live.count("create") == 20


# -- 8. cancellation is never swallowed -------------------------------------------------


async def _slow_to_stop_inputs() -> AsyncIterator[str]:
    """Inputs whose reading takes a while to unwind when cancelled."""
    yield "first"
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(0.3)  # cleaning up takes a moment
        raise


async def _first_then_time_out(client: ba.BananaClient) -> None:
    async with asyncio.timeout(None) as deadline:
        async with contextlib.aclosing(client.generate_many(_slow_to_stop_inputs())) as outcomes:
            async for _ in outcomes:
                # Expires while aclose() waits for the producer to unwind.
                deadline.reschedule(asyncio.get_running_loop().time() + 0.05)
                break


async def test_a_timeout_while_the_batch_unwinds_still_raises(live: FakeBananaServer) -> None:
    async with live_client(live) as client:
        with pytest.raises(TimeoutError):
            await _first_then_time_out(client)
    assert batch_tasks() == []


async def test_a_consumer_cancelled_while_the_batch_unwinds_ends_cancelled(
    live: FakeBananaServer,
) -> None:
    unwinding = asyncio.Event()

    async def consume(client: ba.BananaClient) -> None:
        async with contextlib.aclosing(client.generate_many(_slow_to_stop_inputs())) as outcomes:
            async for _ in outcomes:
                unwinding.set()
                break

    async with live_client(live) as client:
        consumer = asyncio.create_task(consume(client))
        await unwinding.wait()
        await asyncio.sleep(0.05)  # the consumer is inside aclose() now
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert consumer.cancelled()
    assert batch_tasks() == []


# -- 4. one bad input is one outcome -------------------------------------------------------


@pytest.mark.parametrize("journaled", [False, True], ids=["plain", "journal"])
async def test_bad_inputs_and_answers_are_outcomes_not_the_end(
    live: FakeBananaServer, tmp_path: Path, journaled: bool
) -> None:
    def script(body: dict[str, Any]) -> TaskScript | None:
        prompt = body["prompt"]
        if prompt == "surrogate id":
            return TaskScript(task_id="bad\ud800", duration=0.05)
        if prompt in ("bad url", "other id"):
            return TaskScript(queries=1)
        return None

    live.script_for = script
    prompts = ["ok 0", "bad \ud800", "surrogate id", "bad url", "ok 4"]
    journal = tmp_path / "batch.sqlite" if journaled else None
    async with live_client(live, timeout=2.0) as client:
        batch = client.generate_many(prompts, concurrency=1, journal=journal)
        outcomes: dict[int, ba.Outcome] = {}
        async with contextlib.aclosing(batch):
            async for outcome in batch:
                outcomes[outcome.index] = outcome
                if outcome.index == 2:  # the next create gets an unusable image URL
                    live.inject(Fault.edit({"image_url": "http://[::1/x.png"}), on="query")
    assert sorted(outcomes) == [0, 1, 2, 3, 4]
    assert outcomes[0].ok
    assert outcomes[4].ok
    assert isinstance(outcomes[1].error, ba.InvalidRequestError)
    assert "surrogate" in str(outcomes[1].error)
    assert isinstance(outcomes[2].error, ba.ResponseValidationError)
    assert outcomes[2].error.task_id == "bad\ud800"
    assert isinstance(outcomes[3].error, ba.TaskFailedError)
    assert "image URL" in str(outcomes[3].error)
    if journal is not None:
        with ba.Journal.open(journal) as opened:
            states = {e.index: e.state for e in opened.entries()}
        assert states == {
            0: ba.EntryState.COMPLETED,
            1: ba.EntryState.ERROR,
            2: ba.EntryState.UNCONFIRMED,
            3: ba.EntryState.FAILED,
            4: ba.EntryState.COMPLETED,
        }
    assert live.count("create") == 4  # the bad prompt was never sent


async def test_an_answer_about_another_task_is_that_inputs_timeout(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    live.script_for = lambda body: TaskScript(duration=None if body["prompt"] == "mixed" else 0.05)
    async with live_client(live) as client:
        batch = client.generate_many(
            ["mixed", "fine"], concurrency=2, timeout=0.5, journal=tmp_path / "b.sqlite"
        )
        live.inject(Fault.edit({"id": "someone-else"}), on="query", times=1000)
        outcomes = {o.index: o async for o in batch}
    assert isinstance(outcomes[0].error, ba.TaskTimeoutError)
    assert isinstance(outcomes[1].error, ba.TaskTimeoutError)
    with ba.Journal.open(tmp_path / "b.sqlite") as journal:
        assert {e.state for e in journal.entries()} == {ba.EntryState.CREATED}


async def test_an_input_whose_repr_fails_is_still_one_bad_input(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    class Odd:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    async with live_client(live) as client:
        batch = client.generate_many(["a", Odd(), "b"], journal=tmp_path / "b.sqlite")  # type: ignore[list-item]
        outcomes = {o.index: o async for o in batch}
    assert outcomes[0].ok
    assert outcomes[2].ok
    assert isinstance(outcomes[1].error, ba.InvalidRequestError)


# -- 2. an id in a create answer is never "nothing created" --------------------------------


async def test_a_resume_never_creates_twice_after_a_code_msg_answer(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.script_for = lambda body: TaskScript(duration=None)
    live.inject(Fault.edit({"code": 0, "msg": "task submitted"}, remove=["status"]), on="create")
    live.inject(Fault.edit({"code": 7001, "msg": "queue full"}, remove=["status"]), on="create")
    async with live_client(live) as client:
        first = {
            o.index: o
            async for o in client.generate_many(
                ["accepted", "refused"], concurrency=1, timeout=0.2, journal=journal
            )
        }
    assert isinstance(first[0].error, ba.TaskTimeoutError)  # created, still running
    assert isinstance(first[1].error, ba.ProviderError)
    refused_id = first[1].error.task_id
    assert refused_id in live.tasks
    with ba.Journal.open(journal) as opened:
        entries = {e.index: e for e in opened.entries()}
    assert entries[0].state is ba.EntryState.CREATED
    assert entries[1].state is ba.EntryState.UNCONFIRMED
    assert entries[1].task_id == refused_id

    for task_id in live.tasks:
        live.finish(task_id)
    async with live_client(live) as client:
        again = {
            o.index: o
            async for o in client.generate_many(
                ["accepted", "refused"], concurrency=1, journal=journal
            )
        }
    assert live.count("create") == 2  # the resume created nothing
    assert again[0].ok
    assert isinstance(again[1].error, ba.UnconfirmedCreateError)
    assert refused_id in str(again[1].error)


# -- 5. a full disk loses no id ---------------------------------------------------------------


# The child runs a journaled batch, and once three creates are on their way it
# lowers its own file size limit (RLIMIT_FSIZE) to what the journal's files
# hold: every later journal write fails with EFBIG, as on a full disk.
FULL_DISK_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, signal, sys
    import banana_async as ba

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill us

    async def main(url, path):
        async with ba.BananaClient("KEY", base_url=url, poll_interval=0.02) as client:
            batch = client.generate_many(
                [f"p{i}" for i in range(50)], concurrency=3, journal=path
            )
            consumer = asyncio.ensure_future(batch.__anext__())
            await asyncio.sleep(0.3)  # three creates sent, their answers stalled
            full = max(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
            resource.setrlimit(resource.RLIMIT_FSIZE, (full, resource.RLIM_INFINITY))
            try:
                await consumer
            except ba.JournalError as exc:
                report = {
                    "unrecorded": exc.unrecorded,
                    "message": str(exc),
                    "cause": type(exc.__cause__).__name__,
                }
                print(json.dumps(report), flush=True)
            finally:
                await batch.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
).replace("KEY", API_KEY)


async def test_a_full_disk_stops_creating_and_reports_every_unrecorded_id(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    live.script_for = lambda body: TaskScript(duration=None)
    # The creates answer slowly, so that three are in flight when the disk fills.
    live.inject(Fault.stall(0.6, process=True), on="create", times=3)
    path = tmp_path / "batch.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FULL_DISK_CHILD,
        live.url,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    report = json.loads(out)
    # Nothing was created after the failure; every created id is reported.
    assert live.count("create") == 3
    assert report["cause"] in ("OperationalError", "OSError")
    unrecorded = {int(index): task_id for index, task_id in report["unrecorded"].items()}
    assert unrecorded.keys() == {0, 1, 2}
    assert set(unrecorded.values()) == set(live.tasks)
    for task_id in live.tasks:
        assert task_id in report["message"]  # in the exception
        assert task_id in err.decode()  # and logged at ERROR as it happened
    # The journal is consistent: three creates whose answers it lacks, which a
    # resumed run reports as unconfirmed instead of sending them again.
    with ba.Journal.open(path) as reopened:
        assert {e.state for e in reopened.entries()} == {ba.EntryState.SENDING}


# -- 10. a journal belongs to one provider ---------------------------------------------------


async def test_a_journal_is_never_resumed_against_another_provider(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.sqlite"
    live.script_for = lambda body: TaskScript(duration=None)
    async with live_client(live, dialect="nano") as client:
        first = [o async for o in client.generate_many(["a", "b"], timeout=0.1, journal=journal)]
    assert all(isinstance(o.error, ba.TaskTimeoutError) for o in first)
    requests = len(live.requests)
    async with FakeBananaServer(api_key=API_KEY) as elsewhere:
        for other in (live_client(live, dialect="navo"), live_client(elsewhere, dialect="nano")):
            async with other as client:
                with pytest.raises(ba.JournalError, match="provider"):
                    _ = [o async for o in client.generate_many(["a", "b"], journal=journal)]
        assert elsewhere.requests == []
    assert len(live.requests) == requests  # nothing was sent to poll foreign ids
    with ba.Journal.open(journal) as opened:
        provider = opened.provider
    assert provider is not None
    assert provider.dialect == "nano"
    assert provider.query_base_url.rstrip("/") == live.url


async def test_concurrency_far_above_the_connection_limit_loses_no_input(
    live: FakeBananaServer,
) -> None:
    # 200 tasks in flight through 4 connections: most requests wait far longer
    # than connect_timeout for a connection. That wait is not connecting.
    live.script_for = lambda body: TaskScript(duration=0.3)
    live.inject(Fault.stall(0.02), on="any", times=400)  # every answer takes a moment
    async with live_client(live, connection_limit=4, connect_timeout=0.05) as client:
        outcomes = [
            o async for o in client.generate_many([f"p{i}" for i in range(200)], concurrency=200)
        ]
    assert [o.error for o in outcomes if not o.ok] == []
    assert live.count("create") == 200


async def test_breaking_on_an_outcome_that_needed_no_task_buys_no_more(
    live: FakeBananaServer,
) -> None:
    # The first outcome is an invalid input, which paid for nothing: the
    # creates started to serve the first read are all there will be.
    live.script_for = lambda body: TaskScript(duration=0.2)
    async with live_client(live) as client:
        outcomes = client.generate_many([" "] + [f"p{i}" for i in range(200)], concurrency=20)
        async for first in outcomes:
            assert isinstance(first.error, ba.InvalidRequestError)
            break
        await asyncio.sleep(0.6)  # every task in flight has finished by now
        created = live.count("create")
        await asyncio.sleep(0.3)
        assert live.count("create") == created
        await outcomes.aclose()
    assert created <= 20


async def _creates_reach(server: FakeBananaServer, count: int) -> None:
    """Wait until the provider has seen ``count`` creates (TimeoutError after 5 s)."""
    async with asyncio.timeout(5.0):
        while server.count("create") < count:  # noqa: ASYNC110 - the server has no event
            await asyncio.sleep(0.01)


async def test_each_read_pays_for_the_next_create(live: FakeBananaServer) -> None:
    # A reader busy with each outcome still keeps the provider busy: every
    # outcome it reads pays for one more create at once, even while other
    # outcomes wait for it (a gate that opened only on an empty queue would
    # hold every create until the reader caught up).
    async with live_client(live) as client:
        outcomes = client.generate_many([f"p{i}" for i in range(30)], concurrency=5)
        async with contextlib.aclosing(outcomes):
            read = 0
            async for _ in outcomes:
                read += 1
                await _creates_reach(live, min(30, read + 5))
                await asyncio.sleep(0.1)  # meanwhile the tasks in flight finish
    assert live.count("create") == 30


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": -1},
        {"timeout": "x"},
        {"timeout": 1e-320},
        {"poll_interval": 1e-320},
        {"poll_interval": 0},
    ],
    ids=repr,
)
async def test_bad_deadlines_fail_at_the_call_before_any_create(
    live: FakeBananaServer, options: dict[str, Any]
) -> None:
    async with live_client(live) as client:
        with pytest.raises(ba.InvalidRequestError):
            client.generate_many(["a", "b"], **options)
    assert live.requests == []


class _Liar:
    """An input that fails wherever it is looked at, its very type included."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("proxy target unavailable")


class _Impostor:
    """An input that claims to be a str (isinstance agrees) without being one."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str


class _Text(str):
    """A str subclass, as numpy.str_ is."""


@pytest.mark.parametrize("journaled", [False, True], ids=["plain", "journal"])
async def test_objects_that_only_pretend_are_one_bad_input_each(
    live: FakeBananaServer, tmp_path: Path, journaled: bool
) -> None:
    assert isinstance(_Impostor(), str)
    inputs: list[Any] = ["a", _Liar(), _Impostor(), _Text("b")]
    journal = tmp_path / "b.sqlite" if journaled else None
    async with live_client(live) as client:
        outcomes = {o.index: o async for o in client.generate_many(inputs, journal=journal)}
    assert sorted(outcomes) == [0, 1, 2, 3]
    assert outcomes[0].ok
    assert outcomes[3].ok
    assert isinstance(outcomes[1].error, ba.InvalidRequestError)
    assert isinstance(outcomes[2].error, ba.InvalidRequestError)
    assert sorted(t.body["prompt"] for t in live.tasks.values()) == ["a", "b"]
    assert outcomes[3].request is not None
    assert type(outcomes[3].request.prompt) is str


async def test_a_batch_that_outlives_its_client_ends_quietly(
    live: FakeBananaServer, caplog: pytest.LogCaptureFixture
) -> None:
    live.script_for = lambda body: TaskScript(duration=0.5)
    async with live_client(live) as client:
        outcomes = client.generate_many([f"p{i}" for i in range(20)], concurrency=5)
        async for _ in outcomes:
            break  # still referenced, never closed, when the client closes
    await asyncio.sleep(0.3)  # the pollers meet the closed client
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    await outcomes.aclose()
    assert batch_tasks() == []


async def test_closing_the_client_under_a_reader_gives_every_input_an_outcome(
    live: FakeBananaServer, caplog: pytest.LogCaptureFixture
) -> None:
    # An application shutting its client down while a batch is still read:
    # the reader gets an outcome for every input (the created tasks' ids in
    # them) and ends, instead of waiting forever.
    live.script_for = lambda body: TaskScript(duration=0.3)
    client = live_client(live)
    await client.__aenter__()
    seen: list[ba.Outcome] = []
    async with asyncio.timeout(10):
        async for outcome in client.generate_many([f"p{i}" for i in range(40)], concurrency=10):
            seen.append(outcome)
            if len(seen) == 3:
                await client.aclose()
    assert sorted(o.index for o in seen) == list(range(40))
    errors = [o.error for o in seen if isinstance(o.error, ba.APIConnectionError)]
    assert any("the BananaClient was closed" in str(e) for e in errors)
    # Every task the provider created is in an outcome, but for creates that
    # the close cut off on the wire (request_sent: they may exist).
    cut_off = sum(1 for e in errors if e.request_sent)
    shown = {o.task.id for o in seen if o.task is not None}
    assert shown <= set(live.tasks)
    assert len(live.tasks) - len(shown) <= cut_off
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_inputs_a_closed_client_never_sent_are_created_on_resume(
    live: FakeBananaServer, tmp_path: Path
) -> None:
    # The creates that the close stopped before they were sent are recorded
    # as "nothing created", so a resumed batch creates them; only a create
    # cut off on the wire is unconfirmed.
    journal = tmp_path / "batch.sqlite"
    prompts = [f"p{i}" for i in range(20)]
    live.script_for = lambda body: TaskScript(duration=0.2)
    client = live_client(live)
    await client.__aenter__()
    first: dict[int, ba.Outcome] = {}
    async with asyncio.timeout(10):
        async for outcome in client.generate_many(prompts, concurrency=5, journal=journal):
            first[outcome.index] = outcome
            if len(first) == 2:
                await client.aclose()
    unsent = {
        i
        for i, o in first.items()
        if isinstance(o.error, ba.APIConnectionError)
        and f"input {i}: the create did not happen" in str(o.error)
    }
    assert unsent  # else this test proves nothing
    for index in unsent:
        error = first[index].error
        assert isinstance(error, ba.APIConnectionError)
        assert error.request_sent is False
        assert error.__cause__ is not None  # what the closed client raised, for the curious
    with ba.Journal.open(journal) as opened:
        states = {e.index: e.state for e in opened.entries()}
    assert {states[i] for i in unsent} == {ba.EntryState.ERROR}
    creates = live.count("create")
    async with live_client(live) as client:
        again = {o.index: o async for o in client.generate_many(prompts, journal=journal)}
    assert sorted(again) == list(range(20))
    for index in unsent:
        assert again[index].ok
        assert not again[index].from_journal
    assert live.count("create") - creates >= len(unsent)
