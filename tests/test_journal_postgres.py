"""One batch shared by many worker processes through a real Postgres.

The tests share the test session's cluster (the ``postgres_url`` and
``batch_name`` fixtures of ``tests/conftest.py``, a ``tests/_postgres.py``
cluster); a test that restarts the database, or needs a password, starts
one of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import pytest

import banana_async as ba
from banana_async.cli import main
from banana_async.journal import EntryState, Journal, JournalEntry, PostgresStore
from banana_async.journal import postgres as postgres_module
from banana_async.journal._entries import canonical_request
from banana_async.journal.postgres import redact_url
from banana_async.testing import FakeBananaServer, Fault, TaskScript

from ._postgres import Cluster
from ._postgres import cluster as new_cluster
from ._servers import killed_at_exit
from .conftest import API_KEY

WORKER = Path(__file__).with_name("_pg_worker.py")
# Bounds on how often a test looks for what it waits for: a stuck test
# fails with a message instead of hanging (they say nothing about speed).
_LOOKS = 6000
_LOOK_PAUSE = 0.05
# Names of roles and databases of one test alone (the tests share one cluster).
_roles = itertools.count()


def _prompts(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"prompt {i}\n" for i in range(count)), encoding="utf-8")
    return path


async def _start_worker(
    url: str, batch: str, server: FakeBananaServer, prompts: Path, concurrency: int, lease: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        batch,
        server.url,
        str(prompts),
        str(concurrency),
        str(lease),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _outcomes(worker: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    out, err = await worker.communicate()
    assert worker.returncode == 0, err.decode(errors="replace")
    return [json.loads(line) for line in out.decode().splitlines()]


async def _entries(url: str, batch: str) -> list[JournalEntry]:
    try:
        reader = await PostgresStore.open(url, batch=batch, join=False)
    except ba.JournalError as exc:
        if "no batch named" not in str(exc):
            raise
        return []  # no worker has joined yet
    async with reader:
        return await reader.entries()


async def _until_joined(url: str, batch: str, count: int) -> None:
    for _ in range(_LOOKS):
        with contextlib.suppress(ba.JournalError):  # no worker has joined yet
            async with await PostgresStore.open(url, batch=batch, join=False) as reader:
                if len(await reader.workers()) >= count:
                    return
        await asyncio.sleep(_LOOK_PAUSE)
    pytest.fail(f"{count} workers never joined batch {batch}")


async def _claimed(url: str, batch: str) -> int:
    """How many inputs of the batch have a row (claimed, recorded or both)."""
    import asyncpg  # here: a machine without the extra still collects the module

    connection = await asyncpg.connect(url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM banana_entries WHERE batch = $1", batch
        )
    finally:
        await connection.close()
    return count


def _creates(server: FakeBananaServer) -> collections.Counter[str]:
    return collections.Counter(r.json["prompt"] for r in server.requests if r.kind == "create")


class _Hold:
    """Keeps the tasks ``server`` creates in flight until :meth:`release`."""

    def __init__(self, server: FakeBananaServer) -> None:
        self._server = server
        self._holding = True
        server.script_for = self._script

    def _script(self, body: dict[str, Any]) -> TaskScript | None:
        return TaskScript(duration=None) if self._holding else None

    def release(self) -> None:
        """Finish every task held so far; later ones take the server's own duration."""
        self._holding = False
        for task_id in list(self._server.tasks):
            with contextlib.suppress(ValueError):  # one that has ended already
                self._server.finish(task_id)


@contextlib.asynccontextmanager
async def _held_provider() -> AsyncIterator[tuple[FakeBananaServer, ba.BananaClient, _Hold]]:
    """A fake provider that holds its tasks (see :class:`_Hold`), and a client of it."""
    async with (
        FakeBananaServer(api_key=API_KEY, duration=0.0) as server,
        ba.BananaClient(API_KEY, base_url=server.url, poll_interval=0.05) as client,
    ):
        yield server, client, _Hold(server)


@contextlib.asynccontextmanager
async def _reading(
    batch: AsyncIterator[ba.Outcome],
) -> AsyncIterator[tuple[asyncio.Task[None], list[ba.Outcome]]]:
    """Read ``batch`` in a task of its own into a list; the task, and the list.

    A worker of the batch that the block leaves running (a failed assertion)
    is cancelled on the way out.
    """
    outcomes: list[ba.Outcome] = []

    async def read() -> None:
        outcomes.extend([o async for o in batch])

    reader = asyncio.create_task(read())
    try:
        yield reader, outcomes
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(_LOOKS):
        if condition():
            return
        await asyncio.sleep(_LOOK_PAUSE)
    pytest.fail(f"never: {what}")


async def test_three_workers_create_each_input_once(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    count = 60
    prompts = _prompts(tmp_path, count)
    async with FakeBananaServer(api_key=API_KEY, duration=0.05) as server:
        hold = _Hold(server)  # no task finishes before all three workers have joined
        workers = [
            await _start_worker(postgres_url, batch_name, server, prompts, 5, 5.0) for _ in range(3)
        ]
        async with killed_at_exit(*workers):
            await _until_joined(postgres_url, batch_name, 3)
            hold.release()
            results = [await _outcomes(worker) for worker in workers]
    creates = _creates(server)
    assert len(creates) == count  # every input created...
    assert set(creates.values()) == {1}  # ...exactly once across the workers
    seen = collections.Counter(r["index"] for rows in results for r in rows)
    assert sorted(seen) == list(range(count))
    assert set(seen.values()) == {1}  # each outcome yielded by one worker only
    assert all(r["ok"] and not r["from_journal"] for rows in results for r in rows)
    # The work was shared: every worker settled inputs.
    assert all(results)
    entries = await _entries(postgres_url, batch_name)
    assert [e.index for e in entries] == list(range(count))
    assert {e.state for e in entries} == {EntryState.COMPLETED}


async def test_a_killed_worker_loses_no_task(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    count = 12
    prompts = _prompts(tmp_path, count)
    async with FakeBananaServer(api_key=API_KEY, duration=0.1) as server:
        hold = _Hold(server)  # tasks created while the first worker runs never finish by themselves
        # The first create is processed (a task is billed), then its answer
        # never comes: in flight when its worker is killed.
        server.inject(Fault.stall(3600, process=True), on="create")
        # Leases of 3 s: a loaded machine may stall a live worker for a second.
        first = await _start_worker(postgres_url, batch_name, server, prompts, 3, 3.0)
        async with killed_at_exit(first):
            entries: list[JournalEntry] = []
            for _ in range(_LOOKS):
                entries = await _entries(postgres_url, batch_name)
                states = collections.Counter(e.state for e in entries)
                if states[EntryState.SENDING] == 1 and states[EntryState.CREATED] == 2:
                    break
                await asyncio.sleep(_LOOK_PAUSE)
            else:
                pytest.fail(f"the first worker never had 3 tasks in flight: {entries}")
            first.send_signal(signal.SIGKILL)
            await first.communicate()
        recorded = {e.index: e.task_id for e in entries if e.state is EntryState.CREATED}
        in_flight = next(e.index for e in entries if e.state is EntryState.SENDING)
        hold.release()
        others = [
            await _start_worker(postgres_url, batch_name, server, prompts, 3, 3.0) for _ in range(2)
        ]
        async with killed_at_exit(*others):
            results = [await _outcomes(worker) for worker in others]
    rows = {r["index"]: r for worker_rows in results for r in worker_rows}
    assert sum(len(worker_rows) for worker_rows in results) == count  # no input twice
    assert sorted(rows) == list(range(count))  # every input finished elsewhere
    for index, recorded_id in recorded.items():
        # A recorded task is polled by whoever took it over, never created again.
        assert rows[index]["ok"]
        assert rows[index]["task_id"] == recorded_id
    unconfirmed = rows[in_flight]
    assert unconfirmed["error_type"] == "UnconfirmedCreateError"
    assert "sent by a worker that stopped before its answer came" in unconfirmed["error"]
    assert unconfirmed["from_journal"]
    others_ok = [r for i, r in rows.items() if i != in_flight]
    assert all(r["ok"] for r in others_ok)
    creates = _creates(server)
    assert len(creates) == count  # the in-flight create is not sent again
    assert set(creates.values()) == {1}
    final = {e.index: e.state for e in await _entries(postgres_url, batch_name)}
    assert final[in_flight] is EntryState.SENDING  # reported unconfirmed, as SQLite does
    assert all(final[i] is EntryState.COMPLETED for i in range(count) if i != in_flight)


async def test_a_worker_with_other_inputs_is_refused(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    async with (
        FakeBananaServer(api_key=API_KEY, duration=0.0) as server,
        ba.BananaClient(API_KEY, base_url=server.url, poll_interval=0.1) as client,
    ):
        done = [
            o
            async for o in client.generate_many(
                ["a cat", "a dog"], journal=postgres_url, batch=batch_name
            )
        ]
        assert all(o.ok for o in done)
        with pytest.raises(ba.JournalError, match="input 1 differs"):
            async for _ in client.generate_many(
                ["a cat", "a fish"], journal=postgres_url, batch=batch_name
            ):
                pass
        # A later run of the same inputs resumes: reported from the journal.
        again = [
            o
            async for o in client.generate_many(
                ["a cat", "a dog"], journal=postgres_url, batch=batch_name
            )
        ]
    assert sorted(o.index for o in again) == [0, 1]
    assert all(o.from_journal for o in again)
    assert server.count("create") == 2


async def _cli(*argv: str, server: FakeBananaServer) -> tuple[int, str, str]:
    env = {**os.environ, "BANANA_API_KEY": API_KEY, "BANANA_BASE_URL": server.url}
    env.pop("BANANA_DIALECT", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with killed_at_exit(process):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_two_cli_workers_share_a_batch_and_the_journal_command_reads_it(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    count = 16
    prompts = _prompts(tmp_path, count)
    async with FakeBananaServer(api_key=API_KEY, duration=0.05) as server:
        runs = await asyncio.gather(
            *(
                _cli(
                    "--json",
                    "batch",
                    str(prompts),
                    "--out",
                    str(tmp_path / f"out{n}"),
                    "--journal",
                    postgres_url,
                    "--batch",
                    batch_name,
                    "--poll-interval",
                    "0.05",
                    server=server,
                )
                for n in range(2)
            )
        )
        code, out, err = await _cli(
            "--json", "journal", postgres_url, "--batch", batch_name, server=server
        )
    assert [run[0] for run in runs] == [0, 0], [run[2] for run in runs]
    reported = [[json.loads(line)["index"] for line in run[1].splitlines()] for run in runs]
    # Every input is reported, none twice by one worker. A worker that
    # starts once the other has finished everything (a busy machine) reports
    # the finished inputs from the journal, as a resumed run does; what
    # counts is that no input was created twice.
    assert set().union(*reported) == set(range(count)), reported
    assert all(len(set(indices)) == len(indices) for indices in reported), reported
    assert server.count("create") == count
    assert code == 0, err
    entries = [json.loads(line) for line in out.splitlines()]
    assert [e["index"] for e in entries] == list(range(count))
    assert {e["state"] for e in entries} == {"completed"}
    assert all(e["file"] for e in entries)  # each image saved by the worker that ran it


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--journal", "j.sqlite", "--batch", "b"], "--batch needs a postgresql://"),
        (["--journal", "postgresql://u@127.0.0.1:1/db"], "needs --batch NAME"),
    ],
)
def test_batch_and_postgres_journal_go_together(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("BANANA_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    prompts = _prompts(tmp_path, 1)
    code = main(["batch", str(prompts), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err


async def test_generate_many_refuses_a_batch_name_without_postgres(tmp_path: Path) -> None:
    async with ba.BananaClient(API_KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(ba.InvalidRequestError, match="batch= names a batch"):
            client.generate_many(["a"], journal=tmp_path / "j.sqlite", batch="b")
        with pytest.raises(ba.InvalidRequestError, match="needs batch=NAME"):
            client.generate_many(["a"], journal="postgresql://u@127.0.0.1:1/db")


def test_passwords_stay_out_of_names() -> None:
    assert redact_url("postgresql://u:secret@db:5432/jobs") == "postgresql://u:***@db:5432/jobs"
    assert redact_url("postgresql://u@db/jobs?password=secret&sslmode=require") == (
        "postgresql://u@db/jobs?password=***&sslmode=require"
    )
    assert redact_url("postgresql://u@db/jobs") == "postgresql://u@db/jobs"


def _request(prompt: str) -> ba.GenerationRequest:
    return ba.GenerationRequest(prompt=prompt)


async def test_a_worker_past_its_lease_records_nothing(postgres_url: str, batch_name: str) -> None:
    async with (
        await PostgresStore.open(postgres_url, batch=batch_name, lease=0.3) as slow,
        await PostgresStore.open(postgres_url, batch=batch_name, lease=30) as other,
    ):
        assert await slow.claim(0, _request("a cat"))
        assert not await other.claim(0, _request("a cat"))  # held by a live lease
        await slow.record_sending(0, _request("a cat"))
        # The slow worker stalls (its renewals stop) past its lease.
        assert slow._renewer is not None
        slow._renewer.cancel()
        for _ in range(_LOOKS):
            if await other.claim(0, _request("a cat")):
                break
            await asyncio.sleep(_LOOK_PAUSE)
        else:
            pytest.fail("the expired claim was never taken over")
        task = ba.Task(id="t-1", status=ba.TaskStatus.PROCESSING)
        with pytest.raises(ba.JournalError, match="no longer holds input 0"):
            await slow.record_created(0, task)
        with pytest.raises(ba.JournalError, match="no longer holds input 0"):
            await slow.settle(0)
        entry = await other.get(0)
        assert entry is not None
        assert entry.state is EntryState.SENDING  # untouched by the fenced record
        await other.record_unconfirmed(0, _request("a cat"), RuntimeError("lost"))
        with pytest.raises(ValueError, match="cannot record a new create"):
            await other.record_sending(0, _request("a cat"))  # the table still rules
        assert await other.counts() == {EntryState.UNCONFIRMED: 1}


async def test_a_closed_worker_gives_its_inputs_back_at_once(
    postgres_url: str, batch_name: str
) -> None:
    async with await PostgresStore.open(postgres_url, batch=batch_name) as staying:
        leaving = await PostgresStore.open(postgres_url, batch=batch_name)
        assert await leaving.claim(3, _request("a dog"))
        assert not await staying.claim(3, _request("a dog"))
        await leaving.aclose()
        await leaving.aclose()  # harmless
        assert await staying.claim(3, _request("a dog"))  # no lease to wait for
        with pytest.raises(ValueError, match="closed"):
            await leaving.get(3)


async def test_a_batch_belongs_to_one_provider(postgres_url: str, batch_name: str) -> None:
    async with await PostgresStore.open(postgres_url, batch=batch_name) as store:
        await store.bind_provider("nano", "https://a.example/", "https://a.example")
        await store.bind_provider("NANO", "https://A.example", "https://a.example/")
        with pytest.raises(ba.JournalError, match="another provider"):
            await store.bind_provider("nano", "https://b.example", "https://b.example")


async def test_an_unreachable_database_is_a_journal_error() -> None:
    with pytest.raises(ba.JournalError, match="cannot connect") as caught:
        await PostgresStore.open("postgresql://u:hunter2@127.0.0.1:1/db", batch="b")
    assert "hunter2" not in str(caught.value)


def test_the_journal_command_reads_a_sqlite_journal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "batch.sqlite"
    with Journal.open(path) as journal:
        journal.record_sending(0, _request("a cat"))
        journal.record_created(0, ba.Task(id="t-7", status=ba.TaskStatus.PROCESSING))
        journal.record_error(1, None, ba.InvalidRequestError("empty prompt"), raw_input="''")
    assert main(["journal", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["0", "created", "t-7"]
    assert out[1].split()[:3] == ["1", "error", "-"]
    assert out[-1] == "2 inputs recorded: 1 created, 1 error"
    assert main(["--json", "journal", str(path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["index"], r["state"], r["prompt"]) for r in records] == [
        (0, "created", "a cat"),
        (1, "error", "''"),
    ]


async def test_without_asyncpg_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now fails
    with pytest.raises(ba.JournalError, match=r"pip install 'banana-async\[postgres\]'"):
        await PostgresStore.open("postgresql://u@127.0.0.1:1/db", batch="b")


async def test_a_claim_checks_the_input_another_worker_holds(
    postgres_url: str, batch_name: str
) -> None:
    async with (
        await PostgresStore.open(postgres_url, batch=batch_name) as first,
        await PostgresStore.open(postgres_url, batch=batch_name) as second,
    ):
        assert await first.claim(0, _request("a cat"))  # recorded with the claim
        assert not await second.claim(0, _request("a cat"))  # held, and the same input
        with pytest.raises(ba.JournalError, match=r"input 0 differs .*by worker"):
            await second.claim(0, _request("a dog"))  # held by first, yet checked
        with pytest.raises(ba.JournalError, match="input 0 differs"):
            await second.claim(0, None, raw_input="{broken")
        # Settled in this run by the first worker: still checked.
        await first.record_sending(0, _request("a cat"))
        await first.record_error(0, _request("a cat"), ba.InvalidRequestError("no"))
        await first.settle(0)
        with pytest.raises(ba.JournalError, match="finished it in this run"):
            await second.claim(0, _request("a dog"))
        # An invalid input is checked too.
        assert await first.claim(1, None, raw_input="{broken")
        with pytest.raises(ba.JournalError, match="input 1 differs"):
            await second.claim(1, _request("a fish"))
        # A claim that created nothing and was given back may be replaced:
        # nothing was paid for under it.
        leaving = await PostgresStore.open(postgres_url, batch=batch_name)
        assert await leaving.claim(2, _request("a bird"))
        await leaving.aclose()
        assert await second.claim(2, _request("a horse"))
        entry_requests = await first.entries()
        assert [e.index for e in entry_requests] == [0]  # a claim alone is no entry


async def test_workers_given_different_files_stop_before_creating(
    postgres_url: str, batch_name: str
) -> None:
    """Two workers with different inputs under one name: the second stops, the batch stays whole."""
    # The first worker's tasks stay in flight while the second starts.
    async with _held_provider() as (server, client, hold):
        first_prompts = [f"cat {i}" for i in range(8)]
        # Another file that starts with the same two lines: the first worker
        # has claimed inputs 0-3 (twice its concurrency) and recorded 0-1.
        second_prompts = [*first_prompts[:2], *(f"dog {i}" for i in range(2, 8))]
        first = client.generate_many(
            first_prompts, concurrency=2, journal=postgres_url, batch=batch_name
        )
        async with _reading(first) as (reader, first_outcomes):
            for _ in range(_LOOKS):
                if server.count("create") >= 2 and await _claimed(postgres_url, batch_name) == 4:
                    break
                await asyncio.sleep(_LOOK_PAUSE)
            else:
                pytest.fail("the first worker never claimed its first inputs")
            with pytest.raises(ba.JournalError, match="input 2 differs") as caught:
                async for _ in client.generate_many(
                    # An iterator: not known in full, so each input is checked.
                    iter(second_prompts),
                    concurrency=2,
                    journal=postgres_url,
                    batch=batch_name,
                ):
                    pass
            assert "no task was created after that" in str(caught.value)
            assert server.count("create") == 2  # the second worker created nothing
            hold.release()
            await reader
    # The first worker ran the whole batch from its own inputs.
    assert sorted(o.index for o in first_outcomes) == list(range(8))
    assert all(o.ok for o in first_outcomes)
    assert sorted(_creates(server)) == sorted(first_prompts)


async def test_a_whole_input_list_is_checked_before_any_create(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    """A list, or a CLI file, known in full: a worker with another one creates nothing."""
    prompts = [f"cat {i}" for i in range(8)]
    # The first worker's tasks stay in flight meanwhile.
    async with _held_provider() as (server, client, hold):
        first = client.generate_many(prompts, concurrency=2, journal=postgres_url, batch=batch_name)
        async with _reading(first) as (reader, outcomes):
            await _until(
                lambda: server.count("create") >= 2, "the first worker created its first tasks"
            )
            # Only the last input differs: no input of its own is checked
            # before the other worker's inputs 4-6 would have been created.
            with pytest.raises(ba.JournalError, match=r"inputs \(8\) differ .*\(8\)"):
                async for _ in client.generate_many(
                    [*prompts[:-1], "a dog"], concurrency=2, journal=postgres_url, batch=batch_name
                ):
                    pass
            # The same file through the CLI, with another size.
            path = tmp_path / "prompts.txt"
            path.write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")
            code, _, err = await _cli(
                "batch",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--journal",
                postgres_url,
                "--batch",
                batch_name,
                "--size",
                "16:9",
                server=server,
            )
            assert code == 3, err
            assert "differ from the ones another worker" in err
            assert server.count("create") == 2  # neither created anything
            hold.release()
            await reader
    assert sorted(o.index for o in outcomes) == list(range(8))
    assert all(o.ok for o in outcomes)


_OUTAGE_PROMPTS = [f"cat {i}" for i in range(6)]


@attrs.frozen
class _Outage:
    """A worker whose database, a cluster of its own, was stopped under it."""

    cluster: Cluster
    server: FakeBananaServer
    hold: _Hold
    store: PostgresStore
    reader: asyncio.Task[None]
    outcomes: list[ba.Outcome]


@contextlib.asynccontextmanager
async def _database_stopped(batch: str, lease: float) -> AsyncIterator[_Outage]:
    """A worker runs :data:`_OUTAGE_PROMPTS`; its database stops with two tasks in flight.

    The tasks stay in flight until the test releases them (``outage.hold``).
    """
    with new_cluster() as cluster:
        async with (
            _held_provider() as (server, client, hold),
            await PostgresStore.open(cluster.url, batch=batch, lease=lease) as store,
        ):
            run = client.generate_many(_OUTAGE_PROMPTS, concurrency=2, journal=store)
            async with _reading(run) as (reader, outcomes):
                await _until(lambda: server.count("create") == 2, "two tasks created")
                await asyncio.to_thread(cluster.stop)
                yield _Outage(cluster, server, hold, store, reader, outcomes)


async def test_a_worker_rides_out_a_database_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with _database_stopped("restart", lease=30) as outage:
        server = outage.server
        polled = server.count("query")
        # The tasks it holds are still polled while the database is away...
        await _until(lambda: server.count("query") >= polled + 4, "polls go on")
        outage.hold.release()
        await _until(
            lambda: any("lost the database" in r.getMessage() for r in caplog.records),
            "the outage is noticed",
        )
        assert server.count("create") == 2  # ...and nothing is created
        await asyncio.to_thread(outage.cluster.start)
        await outage.reader
        counts = await outage.store.counts()
    assert sorted(o.index for o in outage.outcomes) == list(range(6))
    assert all(o.ok for o in outage.outcomes)
    assert sorted(_creates(server)) == _OUTAGE_PROMPTS  # each created once
    assert counts == {EntryState.COMPLETED: 6}
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    # Two WARNINGs, without -v the only lines: it is lost, then it is back.
    warned = [m for level, m in messages if level >= logging.WARNING]
    assert len(warned) == 2, warned
    assert "lost the database" in warned[0]
    assert "the database is back" in warned[1]
    assert "goes on" in warned[1]
    # What happened in words, never asyncpg's internals.
    assert any(
        f"({why})" in warned[0]
        for why in ("connection refused", "the connection broke", "terminating connection")
    ), warned[0]
    assert "state" not in warned[0]
    assert "Error" not in warned[0]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback


async def test_closing_while_the_database_is_away_says_so_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _database_stopped("close", lease=30) as outage:
        outage.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await outage.reader
        closing = asyncio.create_task(outage.store.aclose())

        def said() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.WARNING and "stops while" in r.getMessage()
            ]

        try:
            # Told before the wait ends: the database is still away.
            await _until(lambda: bool(said()), "the wait is told")
            assert not closing.done()
            await asyncio.to_thread(outage.cluster.start)
            await closing
        finally:
            closing.cancel()
        owners = await _owners(outage.cluster.url, "close")
    (line,) = said()
    assert "the database is unreachable: it waits up to " in line
    assert "(until its lease runs out) to give back the " in line
    assert owners == {"workers": 0, "owned": 0}
    back = [r for r in caplog.records if "the database is back" in r.getMessage()]
    assert [r.levelno for r in back] == [logging.WARNING]
    assert "gave its inputs back" in back[0].getMessage()


async def test_a_worker_cut_off_past_its_lease_stops_creating(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _database_stopped("cut-off", lease=2) as outage:
        await _until(
            lambda: any("ran out" in r.getMessage() for r in caplog.records),
            "the lease runs out",
        )
        outage.hold.release()
        with pytest.raises(ba.JournalError, match="lease of 2 s ran out") as caught:
            await outage.reader
    assert "no task was created after that" in str(caught.value)
    assert outage.server.count("create") == 2  # nothing created once the lease was in doubt
    assert not caught.value.unrecorded  # both tasks were recorded before the outage


async def _cli_process(*argv: str, server: FakeBananaServer) -> asyncio.subprocess.Process:
    """``banana-async ARGV`` as a subprocess whose stdout and stderr the test reads."""
    env = {**os.environ, "BANANA_API_KEY": API_KEY, "BANANA_BASE_URL": server.url}
    env.pop("BANANA_DIALECT", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "banana_async",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _read_until(
    process: asyncio.subprocess.Process, wanted: str, seen: list[str] | None = None
) -> str:
    """Read ``process``'s stderr line by line up to one holding ``wanted``; that line."""
    assert process.stderr is not None
    lines = [] if seen is None else seen
    while True:
        line = (await process.stderr.readline()).decode()
        if not line:
            pytest.fail(f"never said {wanted!r}: {''.join(lines)}")
        lines.append(line)
        if wanted in line:
            return line


async def test_a_worker_shows_whose_lease_it_waits_for_on_its_progress_line(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path, 2)
    # A worker that claimed input 0 and dies once the CLI worker is seen
    # waiting for it (it renews nothing more): a worker joining later
    # would start a new run.
    dead = await PostgresStore.open(postgres_url, batch=batch_name, lease=2)
    try:
        assert await dead.claim(0, _request("prompt 0"))
        async with FakeBananaServer(api_key=API_KEY, duration=0.0) as server:
            # No -v: the progress line is what a user sees.
            worker = await _cli_process(
                "batch",
                str(prompts),
                "--out",
                str(tmp_path / "out"),
                "--journal",
                postgres_url,
                "--batch",
                batch_name,
                "--lease",
                "5",
                "--poll-interval",
                "0.05",
                server=server,
            )
            async with killed_at_exit(worker):
                seen: list[str] = []
                try:
                    line = await _read_until(worker, "waiting for worker", seen)
                finally:
                    assert dead._renewer is not None
                    dead._renewer.cancel()
                _, rest = await worker.communicate()
    finally:
        await dead.aclose()
    err = "".join(seen) + rest.decode()
    assert worker.returncode == 0, err
    assert f"waiting for worker {dead.worker}'s lease on 1 input(s), ~" in line
    assert line.startswith("batch prompts.txt: 1/2 (this worker's share)"), line
    assert "took over" not in err  # INFO, under -v
    assert "takes over input" not in err  # DEBUG, under -vv
    assert server.count("create") == 2
    # Its share is told as a share, with no time left to guess.
    assert "2/2 (this worker's share)" in err
    assert f"this worker ran all 2 inputs of batch '{batch_name}'" in err
    assert "the rest" not in err  # there was none
    assert "ETA" not in err


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
async def test_a_stop_while_the_database_is_away_says_it_waits(stop: str, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 6)
    with new_cluster() as cluster:
        async with FakeBananaServer(api_key=API_KEY, duration=0.0) as server:
            _Hold(server)  # two tasks in flight for as long as the test needs
            worker = await _cli_process(
                "batch",
                str(prompts),
                "--out",
                str(tmp_path / "out"),
                "--journal",
                cluster.url,
                "--batch",
                "stop",
                "--concurrency",
                "2",
                "--poll-interval",
                "0.05",
                server=server,
            )
            async with killed_at_exit(worker):
                await _until(lambda: server.count("create") == 2, "two tasks created")
                await asyncio.to_thread(cluster.stop)
                worker.send_signal(getattr(signal, stop))
                seen: list[str] = []
                # Said while the database is still away: before the wait, not after it.
                line = await _read_until(worker, "stopping:", seen)
                if stop == "SIGTERM":
                    # Its progress line says so too, while it waits.
                    progress = await _read_until(worker, "stopping: waiting for the database")
                    await asyncio.to_thread(cluster.start)
                else:
                    worker.send_signal(signal.SIGINT)  # the second Ctrl-C skips the wait
                _, rest = await worker.communicate()
            err = "".join(seen) + rest.decode()
            if stop == "SIGTERM":
                owners = await _owners(cluster.url, "stop")
    assert line.startswith("stopping: the database is unreachable; waiting up to "), line
    # The two tasks in flight, and what it had claimed to create next.
    assert re.search(r"s for it, to give back the [2-9] input\(s\) this worker holds \(", line)
    assert line.count("stopping") == 1
    assert err.count("stopping: the database is unreachable") == 1  # not one per try
    if stop == "SIGTERM":
        assert "(SIGKILL skips the wait: " in line
        assert progress.startswith("batch prompts.txt: 0/6 (this worker's share)"), progress
        assert re.search(r", stopping: waiting for the database, ~\d+ s left$", progress)
        assert worker.returncode == 143, err
        assert "the database is back after" in err
        assert "gave its inputs back" in err
        assert owners == {"workers": 0, "owned": 0}  # given back: nothing waits for a lease
    else:
        assert "(Ctrl-C again skips the wait: " in line
        assert worker.returncode == 130, err
    assert "Run the same command again" in err  # the interruption message, as ever
    assert server.count("create") == 2


async def _owners(url: str, batch: str) -> dict[str, int]:
    """How many workers a batch lists, and how many of its inputs have an owner."""
    import asyncpg  # here: a machine without the extra still collects the module

    connection = await asyncpg.connect(url)
    try:
        workers: int = await connection.fetchval(
            "SELECT count(*) FROM banana_workers WHERE batch = $1", batch
        )
        owned: int = await connection.fetchval(
            "SELECT count(*) FROM banana_entries WHERE batch = $1 AND owner IS NOT NULL", batch
        )
    finally:
        await connection.close()
    return {"workers": workers, "owned": owned}


async def test_a_take_over_is_told_once_per_worker_and_summed_up(
    postgres_url: str, batch_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="banana_async")
    async with (
        await PostgresStore.open(postgres_url, batch=batch_name, lease=2) as dead,
        await PostgresStore.open(postgres_url, batch=batch_name) as taker,
    ):
        for index in range(3):
            assert await dead.claim(index, _request(f"hen {index}"))
        taking = asyncio.create_task(taker.take_over())
        try:
            await _until(lambda: bool(taker.waiting_for), "the taker waits")
            (wait,) = taker.waiting_for
            assert (wait.worker, wait.inputs) == (dead.worker, 3)
            assert 0 < wait.left() <= 2
            assert dead._renewer is not None
            dead._renewer.cancel()  # it dies
            taken = [await taking]
        finally:
            if not taking.done():
                taking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await taking
        assert taker.waiting_for == ()
        taken += [await taker.take_over(), await taker.take_over()]
        assert [t[0] for t in taken if t is not None] == [0, 1, 2]
        for index in range(3):
            await taker.settle(index)
        assert await taker.take_over() is None
    at = {
        level: [r.getMessage() for r in caplog.records if r.levelno == level]
        for level in (logging.DEBUG, logging.INFO)
    }
    assert len([m for m in at[logging.DEBUG] if "takes over input" in m]) == 3
    info = [m for m in at[logging.INFO] if "takes over" in m or "took over" in m]
    assert info == [
        f"journal {taker.name}: worker {taker.worker} takes over the inputs of worker "
        f"{dead.worker} (its lease ran out)",
        f"journal {taker.name}: worker {taker.worker} took over 3 input(s) of worker {dead.worker}",
    ]


async def test_lease_needs_a_postgres_journal(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 1)
    async with FakeBananaServer(api_key=API_KEY) as server:
        code, _, err = await _cli(
            "batch", str(prompts), "--out", str(tmp_path / "out"), "--lease", "5", server=server
        )
    assert code == 2
    assert "--lease needs a postgresql:// --journal" in err


async def test_an_unknown_batch_name_is_an_error(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    async with await PostgresStore.open(postgres_url, batch=batch_name):
        pass  # the batch exists from here on
    with pytest.raises(ba.JournalError, match=rf"no batch named 'nosuch' .*{batch_name}"):
        await PostgresStore.open(postgres_url, batch="nosuch", join=False)
    async with FakeBananaServer(api_key=API_KEY) as server:
        code, out, err = await _cli("journal", postgres_url, "--batch", "nosuch", server=server)
    assert code == 3, (out, err)
    assert "no batch named 'nosuch'" in err
    assert batch_name in err  # the names there are
    assert "inputs recorded" not in out


async def test_the_journal_command_without_a_batch_lists_the_batches(
    postgres_url: str, batch_name: str
) -> None:
    async with await PostgresStore.open(postgres_url, batch=batch_name):
        pass  # the batch exists from here on
    assert batch_name in await PostgresStore.batch_names(postgres_url)
    async with FakeBananaServer(api_key=API_KEY) as server:
        code, out, err = await _cli("journal", postgres_url, server=server)
    assert code == 2, (out, err)
    assert "a postgresql:// journal needs --batch NAME; its batches, newest first: " in err
    assert batch_name in err
    assert out == ""


async def test_listing_the_batches_of_an_empty_database_creates_nothing(
    postgres_url: str,
) -> None:
    number = next(_roles)
    role, database = f"lister{number}", f"nobatch{number}"
    await _admin(postgres_url, f"CREATE ROLE {role} LOGIN", f"CREATE DATABASE {database}")
    url = _as_user(postgres_url, role, database)
    assert await PostgresStore.batch_names(url) == []
    async with FakeBananaServer(api_key=API_KEY) as server:
        code, _, err = await _cli("journal", url, server=server)
        assert code == 2, err
        assert "needs --batch NAME; it has no batch yet" in err
        # Nothing listening: the usage error still comes, saying why no names.
        code, _, err = await _cli("journal", "postgresql://u@127.0.0.1:1/db", server=server)
    assert code == 2, err
    assert "needs --batch NAME; its batches cannot be listed (cannot connect" in err
    assert "connection refused" in err
    assert await PostgresStore.batch_names(url) == []  # no table was made


async def test_an_infinite_lease_is_refused_as_not_finite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BANANA_API_KEY", API_KEY)
    prompts = _prompts(tmp_path, 1)
    argv = ["batch", str(prompts), "--out", str(tmp_path / "out"), "--lease", "inf"]
    code = await asyncio.to_thread(main, [*argv, "--journal", "postgresql://u@127.0.0.1:1/db"])
    assert code == 2
    assert "--lease: must be a finite number above zero, not 'inf'" in capsys.readouterr().err


def test_an_outage_is_told_in_words() -> None:
    import asyncpg  # here: a machine without the extra still collects the module

    why = postgres_module._why_lost
    assert why(TimeoutError(), 20) == "no answer within 20 s"
    assert why(ConnectionRefusedError(111, "Connect call failed"), 10) == "connection refused"
    assert why(ConnectionResetError(104, "reset"), 10) == "the connection broke"
    switch = asyncpg.InternalClientError("cannot switch to state 15; another operation (2)")
    assert why(switch, 20) == "the connection broke"
    closed = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
    assert why(closed, 20) == "the connection broke"
    shutdown = asyncpg.exceptions.AdminShutdownError(
        "terminating connection due to administrator command"
    )
    assert why(shutdown, 20) == "terminating connection due to administrator command"
    assert why(OSError(113, "No route to host"), 10) == "No route to host"


async def test_a_read_only_store_cannot_run_a_batch(postgres_url: str, batch_name: str) -> None:
    async with await PostgresStore.open(postgres_url, batch=batch_name) as worker:
        assert not worker.read_only
    async with (
        await PostgresStore.open(postgres_url, batch=batch_name, join=False) as reader,
        ba.BananaClient(API_KEY, base_url="http://127.0.0.1:9") as client,
    ):
        assert reader.read_only
        with pytest.raises(ba.InvalidRequestError, match=r"join=False .*only reads the batch"):
            client.generate_many(["a cat"], journal=reader)


async def test_the_password_comes_from_pgpassword_and_stays_off_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with new_cluster(password="s3cret-pw") as cluster:
        # The URL without a password: asyncpg takes it from $PGPASSWORD.
        monkeypatch.delenv("PGPASSWORD", raising=False)
        with pytest.raises(ba.JournalError, match=r"password") as refused:
            await PostgresStore.open(cluster.url, batch="pw")
        # Where a password goes.
        assert str(refused.value).startswith(f"cannot connect to the journal {cluster.url}: ")
        assert "$PGPASSWORD or ~/.pgpass" in str(refused.value)
        assert "postgresql://USER:PASSWORD@HOST/DB" in str(refused.value)
        wrong = cluster.url.replace("postgres@", "postgres:not-it@")
        with pytest.raises(ba.JournalError, match="password authentication failed") as refused:
            await PostgresStore.open(wrong, batch="pw")
        assert "$PGPASSWORD or ~/.pgpass" in str(refused.value)
        assert "not-it" not in str(refused.value)
        monkeypatch.setenv("PGPASSWORD", "s3cret-pw")
        async with await PostgresStore.open(cluster.url, batch="pw") as store:
            assert await store.workers() == [store.worker]
        async with FakeBananaServer(api_key=API_KEY) as server:
            code, _, err = await _cli("journal", cluster.url, "--batch", "pw", server=server)
            assert code == 0, err
            assert "password" not in err
            monkeypatch.delenv("PGPASSWORD")
            with_password = cluster.url.replace("postgres@", "postgres:s3cret-pw@")
            code, _, err = await _cli("journal", with_password, "--batch", "pw", server=server)
    assert code == 0, err
    assert err.count("warning: the journal URL carries a password") == 1
    assert "~/.pgpass or $PGPASSWORD" in err
    assert "s3cret-pw" not in err


async def test_a_database_that_never_answers_names_the_timeout() -> None:
    with socket.socket() as hung:  # accepts connections (the kernel does), answers nothing
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        port = hung.getsockname()[1]
        with pytest.raises(ba.JournalError, match=r"no answer within 0\.5 s \(connect_timeout\)"):
            await PostgresStore.open(
                f"postgresql://u@127.0.0.1:{port}/db?sslmode=disable",
                batch="b",
                connect_timeout=0.5,
            )


# Seeds of the restarts below: each picks when the database stops (after how
# many creates) and for how long; a failure names its seed, to replay it with
# BANANA_PG_RESTART_SEEDS=SEED. `nox -s pg-restarts` runs 30 of them.
_RESTART_SEEDS = tuple(
    int(seed) for seed in os.environ.get("BANANA_PG_RESTART_SEEDS", "7").split(",")
)


@pytest.mark.parametrize("seed", _RESTART_SEEDS)
async def test_restarts_during_many_records_are_ridden_out(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(seed)
    prompts = [f"dog {i}" for i in range(240)]
    # Three restarts, each once a seeded share of the creates went out, so
    # that the stop lands while dozens of records are on their way.
    marks = sorted(rng.sample(range(20, 200), 3))
    with new_cluster() as cluster:
        async with (
            FakeBananaServer(api_key=API_KEY, duration=0.02) as server,
            ba.BananaClient(API_KEY, base_url=server.url, poll_interval=0.02) as client,
            await PostgresStore.open(cluster.url, batch="restarts", lease=30) as store,
        ):
            run = client.generate_many(prompts, concurrency=40, journal=store)
            async with _reading(run) as (reader, outcomes):
                for mark in marks:

                    def enough(mark: int = mark) -> bool:
                        return server.count("create") >= mark

                    await _until(enough, f"{mark} creates")
                    await asyncio.to_thread(cluster.stop)
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    await asyncio.to_thread(cluster.start)
                await reader
            counts = await store.counts()
    assert sorted(o.index for o in outcomes) == list(range(len(prompts))), seed
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok][:3]
    assert sorted(_creates(server)) == sorted(prompts)  # each created once
    assert counts == {EntryState.COMPLETED: len(prompts)}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback


async def _admin(url: str, *statements: str) -> None:
    import asyncpg  # here: a machine without the extra still collects the module

    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _as_user(url: str, user: str, database: str | None = None) -> str:
    parts = urlsplit(url)
    path = parts.path if database is None else f"/{database}"
    return urlunsplit((parts.scheme, f"{user}@{parts.hostname}:{parts.port}", path, "", ""))


async def test_a_read_only_role_reads_a_batch(
    postgres_url: str, batch_name: str, tmp_path: Path
) -> None:
    role = f"reader{next(_roles)}"
    async with await PostgresStore.open(postgres_url, batch=batch_name) as worker:
        assert await worker.claim(0, _request("a cat"))
        await worker.record_sending(0, _request("a cat"))
    # SELECT on the three tables, and nothing else (no CREATE on the schema).
    await _admin(
        postgres_url,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT ON banana_batches, banana_workers, banana_entries TO {role}",
    )
    reader_url = _as_user(postgres_url, role)
    async with await PostgresStore.open(reader_url, batch=batch_name, join=False) as reader:
        assert reader.read_only
        assert [e.index for e in await reader.entries()] == [0]
        assert await reader.counts() == {EntryState.SENDING: 1}
        assert await reader.workers() == []
    async with FakeBananaServer(api_key=API_KEY) as server:
        code, out, err = await _cli("journal", reader_url, "--batch", batch_name, server=server)
    assert code == 0, err
    assert "1 inputs recorded: 1 sending" in out
    assert "warning" not in err  # closing wrote nothing (it could not)


async def test_reading_where_there_are_no_tables_says_there_are_no_batches(
    postgres_url: str,
) -> None:
    number = next(_roles)
    role, database = f"reader{number}", f"empty{number}"
    await _admin(postgres_url, f"CREATE ROLE {role} LOGIN", f"CREATE DATABASE {database}")
    url = _as_user(postgres_url, role, database)
    with pytest.raises(ba.JournalError, match="no batches here") as caught:
        await PostgresStore.open(url, batch="lease5", join=False)
    assert str(caught.value).count("lease5") == 1
    # Nothing was created by the look.
    with pytest.raises(ba.JournalError, match="no batches here"):
        await PostgresStore.open(
            _as_user(postgres_url, "postgres", database), batch="x", join=False
        )


async def test_a_refused_read_says_read_and_names_the_batch_once(
    postgres_url: str, batch_name: str
) -> None:
    role = f"reader{next(_roles)}"
    async with await PostgresStore.open(postgres_url, batch=batch_name):
        pass
    await _admin(postgres_url, f"CREATE ROLE {role} LOGIN")  # no SELECT at all
    async with FakeBananaServer(api_key=API_KEY) as server:
        code, _, err = await _cli(
            "journal", _as_user(postgres_url, role), "--batch", batch_name, server=server
        )
    assert code == 3, err
    assert f"cannot read batch '{batch_name}'" in err
    assert "permission denied" in err
    assert "join" not in err
    assert err.count(batch_name) == 1


async def test_the_lease_wait_is_told_once_and_then_every_period(
    postgres_url: str,
    batch_name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shorter than in production (1 s, not 10; looks every 0.1 s, not 1),
    # so that a short real wait holds many looks and several periods.
    monkeypatch.setattr(postgres_module, "_WAIT_NOTE_EVERY", 1.0)
    monkeypatch.setattr(postgres_module, "_SWEEP_PAUSE", 0.1)
    caplog.set_level(logging.INFO)
    prompts = [f"cow {i}" for i in range(6)]
    async with (
        await PostgresStore.open(postgres_url, batch=batch_name) as holder,
        await PostgresStore.open(postgres_url, batch=batch_name) as waiter,
        FakeBananaServer(api_key=API_KEY) as server,
        ba.BananaClient(API_KEY, base_url=server.url) as client,
    ):
        for index, prompt in enumerate(prompts):
            assert await holder.claim(index, _request(prompt))
        started = time.monotonic()
        async with _reading(client.generate_many(prompts, journal=waiter)) as (reader, outcomes):
            # A live worker making progress: its count goes down at every look.
            for index in range(len(prompts)):
                await asyncio.sleep(0.4)
                await holder.settle(index)
            await reader
        waited = time.monotonic() - started
    assert outcomes == []  # all settled by the other worker
    said = [r for r in caplog.records if "waits for worker" in r.getMessage()]
    assert said, "the wait was never told"
    assert all(holder.worker in r.getMessage() for r in said)
    # Once, then once a period at most: never once a look (24 looks).
    assert len(said) <= waited / 1.0 + 1, (len(said), waited)
    assert server.count("create") == 0


class _AnswerLost(PostgresStore):
    """A store whose second ``created`` record is made and then fails (its answer lost)."""

    failed = False

    async def record_created(self, index: int, task: ba.Task) -> None:
        await super().record_created(index, task)
        if index == 1 and not self.failed:
            self.failed = True
            raise ba.JournalError("the answer was lost", path=self.name)


async def test_a_record_made_before_its_failure_is_no_lost_task(
    postgres_url: str, batch_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        _held_provider() as (server, client, hold),
        await _AnswerLost.open(postgres_url, batch=batch_name) as store,
    ):
        run = client.generate_many(["a", "b", "c"], concurrency=3, journal=store)
        async with _reading(run) as (reader, _):
            await _until(lambda: store.failed, "the record fails")
            hold.release()
            with pytest.raises(ba.JournalError, match="the answer was lost") as caught:
                await reader
        recorded = await store.get(1)
    assert recorded is not None
    assert recorded.task_id is not None
    # The journal holds it: it is not reported as a task to note by hand.
    assert caught.value.unrecorded == {}
    assert "not in the journal" not in str(caught.value)
    assert not [r for r in caplog.records if "not in the journal" in r.getMessage()]
    assert server.count("create") >= 2


async def test_a_journal_failure_is_one_error_line(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 50)
    with new_cluster() as cluster:
        # Tasks that take a while: two in flight when the database stops.
        async with FakeBananaServer(api_key=API_KEY, duration=0.5) as server:
            worker = asyncio.create_task(
                _cli(
                    "batch",
                    str(prompts),
                    "--out",
                    str(tmp_path / "out"),
                    "--journal",
                    cluster.url,
                    "--batch",
                    "one-line",
                    "--lease",
                    "2",
                    "--concurrency",
                    "2",
                    "--poll-interval",
                    "0.05",
                    server=server,
                )
            )
            try:
                await _until(lambda: server.count("create") >= 2, "two tasks created")
                # Down for good: the worker's lease runs out, its batch fails.
                await asyncio.to_thread(cluster.stop)
            finally:
                code, _, err = await worker
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    # A create whose record was on its way when the database went (a loaded
    # machine) is a paid task the journal lacks: its id gets a line of its own
    # at once, so that a crash later cannot lose it, and is listed again in
    # the batch's one error line.
    lost = [line for line in lines if line.endswith("is not in the journal; note its id")]
    errors = [line for line in lines if line not in lost]
    assert len(errors) == 1, err
    for line in lost:
        task_id = line.split(" task ", 1)[1].split(" ", 1)[0]
        assert f": {task_id}" in errors[0], err
    assert "no task was created after that" in errors[0]
    # What to do about it, as after a stop.
    assert errors[0].endswith(
        f"Run the same command again (same FILE, --journal {cluster.url} --batch one-line) "
        "once the database is back to resume: tasks already created are polled again, "
        "never created twice"
    ), errors[0]
    assert "(connection refused)" in errors[0] or "(the connection broke)" in errors[0], errors[0]


async def test_an_input_taken_by_a_try_whose_answer_was_lost_is_taken_again(
    postgres_url: str, batch_name: str
) -> None:
    async with await PostgresStore.open(postgres_url, batch=batch_name) as worker:
        assert await worker.claim(0, _request("a cat"))
        # What a take-over whose commit went through, and whose answer was
        # lost with its connection, leaves: the row is the worker's, and the
        # worker never heard of it (it sent the statement again).
        import asyncpg  # here: a machine without the extra still collects the module

        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute(
                "INSERT INTO banana_entries (batch, idx, request, updated_at, owner)"
                " VALUES ($1, 1, $2, 0, $3)",
                batch_name,
                canonical_request(_request("a dog")),
                worker.worker,
            )
        finally:
            await connection.close()
        taken = await worker.take_over()
        assert taken is not None
        assert taken[:2] == (1, _request("a dog"))
        await worker.settle(0)
        await worker.settle(1)
        assert await worker.take_over() is None  # held ones are not taken twice
