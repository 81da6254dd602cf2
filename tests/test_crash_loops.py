"""Crash loops: a journaled batch killed with SIGKILL again and again, then run to the end.

The fake provider runs in this test's process, so its counts survive every
kill; the batch runs in worker processes (``_crash_worker.py``) that are
killed at seeded random moments of four kinds:

- ``delay``: a random time after the worker started (while it opens the
  journal, reads it, creates, polls or downloads);
- ``provider``: while the provider processes a create (the task exists and
  is billed; its answer never reaches the worker);
- ``created``: right after the worker told of a task's creation (its id is
  in the journal; others are on the wire or polling);
- ``outcome``: right after the worker yielded an outcome.

Some creates are slow (before or after the provider processes them), and
some rounds run under a tight request budget whose 429s refuse creates
(sent again later: nothing was created). Then
the batch runs to the end, and the provider's counts are held to the
journal's promises: no input was ever created twice (duplicate creates),
every task the provider created ends in the outcomes unless its create was
in flight at a kill (and then its input is reported unconfirmed), and
there is one outcome per input.

The regular suite runs a few rounds over ~100 inputs; ``nox -s crash`` runs
20 rounds over more inputs and prints the counts (``BANANA_CRASH_ROUNDS``,
``BANANA_CRASH_INPUTS`` and ``BANANA_CRASH_SEED`` set the size and the seed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest

from banana_async.journal import EntryState, Journal, JournalEntry, PostgresStore
from banana_async.testing import FakeBananaServer, Fault, RequestBudget, TaskScript

from .conftest import API_KEY

WORKER = Path(__file__).with_name("_crash_worker.py")
ROUNDS = int(os.environ.get("BANANA_CRASH_ROUNDS", "5"))
INPUTS = int(os.environ.get("BANANA_CRASH_INPUTS", "100"))
SEED = int(os.environ.get("BANANA_CRASH_SEED", "11"))
MODES = ("delay", "provider", "created", "outcome")
# Bounds on how often a test looks for what it waits for: a stuck test
# fails with a message instead of hanging (they say nothing about speed).
_LOOKS = 6000
_LOOK_PAUSE = 0.05
# States of an entry whose create went on the wire and was never answered.
_IN_FLIGHT = (EntryState.SENDING, EntryState.UNCONFIRMED)


def _prompt(number: int) -> str:
    return f"crash {number:05d}"


def _number(prompt: str) -> int:
    return int(prompt.split()[1])


def _script(body: dict[str, Any]) -> TaskScript:
    """Each input's task, the same in every round: 0.05 to 0.6 s, one in 13 fails."""
    number = _number(body["prompt"])
    duration = random.Random(number).uniform(0.05, 0.6)
    return TaskScript(duration=duration, outcome="fail" if number % 13 == 7 else "complete")


class Worker:
    """A worker process and what it printed so far (stdout and stderr read as they come)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.err = bytearray()
        self.changed = asyncio.Event()
        self.killed = False
        self._readers = asyncio.gather(self._read_out(), self._read_err())
        # Woken once both pipes are closed too (the worker has exited).
        self._readers.add_done_callback(lambda _: self.changed.set())

    @classmethod
    async def start(cls, **settings: Any) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            json.dumps(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_out(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            if line.endswith(b"\n"):  # a line cut by a kill is not one
                self.lines.append(json.loads(line))
            self.changed.set()

    async def _read_err(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self.err += chunk

    def count(self, kind: str) -> int:
        return sum(kind in line for line in self.lines)

    def outcomes(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "outcome" in line]

    @property
    def run(self) -> int | None:
        starts = [line["run"] for line in self.lines if "started" in line]
        return starts[0] if starts else None

    async def until(self, done: Callable[[Worker], bool]) -> None:
        """Return once ``done(self)`` is true or the worker has exited."""
        while not done(self) and not self._readers.done():
            self.changed.clear()
            await self.changed.wait()

    def kill(self) -> None:
        """SIGKILL, at once (callable from the provider's request handler)."""
        if self.process.returncode is None and not self.killed:
            self.killed = True
            self.process.kill()

    async def ended(self) -> None:
        """Wait for the exit; a worker not killed must have ended well."""
        await self._readers
        await self.process.wait()
        if not self.killed:
            assert self.process.returncode == 0, self.err.decode(errors="replace")


@contextlib.asynccontextmanager
async def _reaped(workers: list[Worker]) -> AsyncIterator[None]:
    """Kill the workers still running when the test leaves (a failed assertion)."""
    try:
        yield
    finally:
        for worker in workers:
            worker.kill()
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.ended()


@attrs.define
class Killer:
    """Picks each round's kill moment (seeded) and kills one worker then."""

    rng: random.Random
    server: FakeBananaServer
    modes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # The worker to kill while the provider processes the create numbered
    # ``countdown`` from now; the provider calls script_for with each create.
    armed: Worker | None = None
    countdown: int = 0
    missed: int = 0
    first: int = 0

    def __attrs_post_init__(self) -> None:
        self.first = self.rng.randrange(len(MODES))
        self.server.script_for = self._processing

    def _processing(self, body: dict[str, Any]) -> TaskScript:
        if self.armed is not None:
            self.countdown -= 1
            if self.countdown <= 0:
                self.armed.kill()  # the task is created below; its answer is lost
                self.armed = None
        return _script(body)

    def trouble(self) -> None:
        """Make a few of the next creates slow, and some rounds' requests rate-limited.

        A slow create is slow before or after the provider processes it: a
        kill then finds it in flight. Under a tight budget the provider
        answers 429 (nothing created) and the create waits to be sent again,
        recorded as certainly not created: a kill then leaves it to be
        created by a later run (a second request, never a second task).
        """
        for _ in range(self.rng.randint(0, 3)):
            fault = Fault.stall(self.rng.uniform(0.1, 0.8), process=self.rng.random() < 0.5)
            self.server.inject(fault, on="create")
        self.server.budget = None
        if self.rng.random() < 0.5:
            self.server.budget = RequestBudget(
                rate=self.rng.uniform(10.0, 40.0),
                burst=self.rng.uniform(2.0, 8.0),
                retry_after=self.rng.random() < 0.5,
            )

    def calm(self) -> None:
        """No budget for the run to the end (a worker learns a 429's rate slowly back)."""
        self.server.budget = None

    async def strike(self, victim: Worker, concurrency: int) -> bool:
        """Kill ``victim`` at this round's moment; False if it ended by itself first."""
        # Every kind of moment in turn (from a random first one), at a random point.
        mode = MODES[(self.first + sum(self.modes.values()) + self.missed) % len(MODES)]
        nth = self.rng.randint(1, 2 * concurrency)
        if mode == "delay":
            # Long enough to land past a worker's start-up now and then.
            delay = self.rng.uniform(0.0, 2.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await victim.until(lambda _: False)  # returns early if it exits
            victim.kill()
        elif mode == "provider":
            self.armed, self.countdown = victim, nth
            await victim.until(lambda w: w.killed)
            self.armed = None
        else:
            seen = victim.count(mode)
            await victim.until(lambda w: w.count(mode) >= seen + nth)
            victim.kill()
        await victim.ended()
        if victim.process.returncode == -9:
            self.modes[mode] += 1
            return True
        self.missed += 1
        return False


@attrs.define
class Tally:
    """The counts of one crash loop, as the table prints them."""

    store: str
    inputs: int
    rounds: int
    kills: int
    create_requests: int
    refused: int
    tasks: int
    duplicate_creates: int
    unconfirmed: int
    unconfirmed_billed: int
    lost_tasks: int
    outcomes: int

    @staticmethod
    def header() -> str:
        return (
            "store     inputs rounds kills creates (429) tasks duplicates unconfirmed "
            "(billed) lost outcomes"
        )

    def row(self) -> str:
        return (
            f"{self.store:<9} {self.inputs:>6} {self.rounds:>6} {self.kills:>5} "
            f"{self.create_requests:>7} {self.refused:>5} {self.tasks:>5} "
            f"{self.duplicate_creates:>10} "
            f"{self.unconfirmed:>11} {self.unconfirmed_billed:>8} {self.lost_tasks:>4} "
            f"{self.outcomes:>8}"
        )


def _check(
    store: str,
    server: FakeBananaServer,
    final: list[dict[str, Any]],
    entries: list[JournalEntry],
    in_flight_at_kills: set[int],
    *,
    rounds: int,
    kills: int,
) -> Tally:
    """Hold the provider's counts and the final outcomes to the journal's promises."""
    creates = collections.Counter(
        _number(r.json["prompt"]) for r in server.requests if r.kind == "create"
    )
    tasks: dict[int, list[str]] = collections.defaultdict(list)
    for task in server.tasks.values():
        tasks[_number(task.body["prompt"])].append(task.id)
    by_index = {line["outcome"]: line for line in final}
    unconfirmed = {i for i, o in by_index.items() if o["error_type"] == "UnconfirmedCreateError"}
    duplicates = {i for i, ids in tasks.items() if len(ids) > 1}
    # A task the provider created that no outcome names, for an input not
    # reported unconfirmed: paid for and lost.
    lost = {
        task_id
        for i, ids in tasks.items()
        for task_id in ids
        if i not in unconfirmed and (i not in by_index or by_index[i]["task_id"] != task_id)
    }
    tally = Tally(
        store=store,
        inputs=INPUTS,
        rounds=rounds,
        kills=kills,
        create_requests=sum(creates.values()),
        refused=server.count_rate_limited("create"),
        tasks=len(server.tasks),
        duplicate_creates=len(duplicates),
        unconfirmed=len(unconfirmed),
        unconfirmed_billed=len(unconfirmed & set(tasks)),
        lost_tasks=len(lost),
        outcomes=len(final),
    )
    print(f"\ncrash loop, seed {SEED}:\n{Tally.header()}\n{tally.row()}")

    # One outcome per input.
    assert len(final) == INPUTS
    assert sorted(by_index) == list(range(INPUTS))
    # No input was created twice: an unconfirmed one is never sent again,
    # and only a create that certainly created nothing (a 429) is.
    assert duplicates == set()
    assert lost == set()
    # Only creates in flight at a kill are unconfirmed, and each one is.
    assert unconfirmed == in_flight_at_kills
    assert kills > 0
    recorded = {e.index: e for e in entries}
    for index, outcome in by_index.items():
        entry = recorded[index]
        if index in unconfirmed:
            assert entry.state in _IN_FLIGHT
            assert outcome["from_journal"]
            assert outcome["task_id"] is None
            continue
        # Every other input's one task ends in its outcome, as recorded.
        assert tasks[index] == [outcome["task_id"]]
        assert entry.task_id == outcome["task_id"]
        if index % 13 == 7:
            assert outcome["error_type"] == "TaskFailedError"
            assert entry.state is EntryState.FAILED
        else:
            assert outcome["ok"], outcome
            assert entry.state is EntryState.COMPLETED
            assert outcome["path"] is not None
            assert Path(outcome["path"]).is_file()
    return tally


def _write_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"{_prompt(i)}\n" for i in range(INPUTS)), encoding="utf-8")
    return path


@attrs.define
class _Loop:
    """What one crash loop shares: the provider, the seeded killer, the workers started."""

    server: FakeBananaServer
    rng: random.Random
    killer: Killer
    settings: dict[str, Any]
    workers: list[Worker]
    in_flight_at_kills: set[int] = attrs.field(factory=set)
    """The inputs whose create was on the wire at a kill (the unconfirmed of later runs)."""

    async def start(self) -> Worker:
        """A new worker of the batch, reaped at the end of the loop."""
        worker = await Worker.start(base_url=self.server.url, **self.settings)
        self.workers.append(worker)
        return worker

    def check(self, store: str, last: Worker, entries: list[JournalEntry]) -> Tally:
        """Hold the loop to the journal's promises (see :func:`_check`)."""
        return _check(
            store,
            self.server,
            last.outcomes(),
            entries,
            self.in_flight_at_kills,
            rounds=ROUNDS,
            kills=sum(self.killer.modes.values()),
        )


@contextlib.asynccontextmanager
async def _crash_loop(tmp_path: Path, **journal: Any) -> AsyncIterator[_Loop]:
    """A crash loop over :data:`INPUTS` prompts; ``journal`` adds the workers' settings."""
    rng = random.Random(SEED)
    settings = {
        "prompts": str(_write_prompts(tmp_path)),
        **journal,
        "download_to": str(tmp_path / "images"),
    }
    workers: list[Worker] = []
    async with FakeBananaServer(api_key=API_KEY) as server, _reaped(workers):
        yield _Loop(server, rng, Killer(rng, server), settings, workers)


def _sqlite_in_flight(path: Path) -> set[int]:
    with Journal.open(path) as journal:
        return {e.index for e in journal.entries() if e.state in _IN_FLIGHT}


async def test_sqlite_crash_loop(tmp_path: Path) -> None:
    journal = tmp_path / "batch.sqlite"
    concurrency = 8
    async with _crash_loop(tmp_path, journal=str(journal), concurrency=concurrency) as loop:
        killer = loop.killer
        for _ in range(ROUNDS):
            killer.trouble()
            worker = await loop.start()
            if await killer.strike(worker, concurrency):
                # What the kill left on the wire: the unconfirmed of later runs.
                loop.in_flight_at_kills |= await asyncio.to_thread(_sqlite_in_flight, journal)
        killer.calm()
        last = await loop.start()
        await last.ended()
        with Journal.open(journal) as opened:
            entries = list(opened.entries())
        loop.check("sqlite", last, entries)
    print(f"kills by moment: {dict(killer.modes)}")


async def _postgres_entries(url: str, batch: str) -> list[JournalEntry]:
    async with await PostgresStore.open(url, batch=batch, join=False) as reader:
        return await reader.entries()


async def _postgres_in_flight(url: str, batch: str, worker: Worker) -> set[int]:
    """The inputs whose create was on the wire when ``worker`` was killed.

    Read right after the kill, before its lease runs out: they are still
    the killed worker's, unsettled, and ``SENDING`` (other workers' creates
    in flight at that moment are theirs).
    """
    started = [line["started"] for line in worker.lines if "started" in line]
    if not started:
        return set()  # killed before it joined: it sent nothing
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT idx FROM banana_entries WHERE batch = $1 AND owner = $2"
            " AND settled_run IS NULL AND state = ANY($3::text[])",
            batch,
            started[0],
            [state.value for state in _IN_FLIGHT],
        )
    finally:
        await connection.close()
    return {row["idx"] for row in rows}


async def _until_no_worker(url: str, batch: str) -> None:
    """Return once no worker of ``batch`` is alive (every lease left has run out)."""
    alive: list[str] = []
    for _ in range(_LOOKS):
        async with await PostgresStore.open(url, batch=batch, join=False) as reader:
            alive = await reader.workers()
        if not alive:
            return
        await asyncio.sleep(_LOOK_PAUSE)
    pytest.fail(f"workers of batch {batch} never left: {alive}")


async def test_postgres_crash_loop(postgres_url: str, batch_name: str, tmp_path: Path) -> None:
    concurrency = 4
    async with _crash_loop(
        tmp_path,
        journal=postgres_url,
        batch=batch_name,
        # A loaded machine may stall a live worker for a second or two: a
        # worker paused past its lease is fenced off and stops.
        lease=5.0,
        concurrency=concurrency,
    ) as loop:
        killer, workers = loop.killer, loop.workers
        live = [await loop.start() for _ in range(3)]
        for _ in range(ROUNDS):
            killer.trouble()
            victim = loop.rng.choice(live)
            if await killer.strike(victim, concurrency):
                loop.in_flight_at_kills |= await _postgres_in_flight(
                    postgres_url, batch_name, victim
                )
            # A new worker in its place (one that ended by itself is replaced too).
            live.remove(victim)
            live.append(await loop.start())
        killer.calm()
        for worker in live:
            await worker.ended()
        # Within one run, no input's outcome is yielded twice.
        yielded: collections.Counter[tuple[int | None, int]] = collections.Counter(
            (worker.run, line["outcome"]) for worker in workers for line in worker.outcomes()
        )
        assert [key for key, n in yielded.items() if n > 1] == []
        # An input is settled before its outcome is handed over: one whose
        # worker was killed in between is in the journal, not in any output.
        printed = {index for _, index in yielded}
        # The batch is done: once the killed workers' leases have run out, a
        # worker alone starts a new run, which reports every input from the
        # journal (and runs whatever was left).
        await _until_no_worker(postgres_url, batch_name)
        last = await loop.start()
        await last.ended()
        assert last.run is not None
        # (A worker killed before it joined has no run.)
        assert all(w.run is None or w.run < last.run for w in workers if w is not last)
        entries = await _postgres_entries(postgres_url, batch_name)
        # The live workers left nothing undone: the new run only reports.
        assert all(line["from_journal"] for line in last.outcomes())
        loop.check("postgres", last, entries)
    print(
        f"kills by moment: {dict(killer.modes)}; outcomes printed by the workers: "
        f"{len(printed)} of {INPUTS} (an input settled by a worker killed before it "
        "printed is in the journal only)"
    )
