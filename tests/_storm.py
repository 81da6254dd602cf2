"""Storms: a batch through a fault profile, and the books that prove nothing was lost.

:func:`storm` runs one batch of prompts through a :class:`FakeBananaServer`
striking requests from a named fault profile, then checks each promise
against what the server received and created:

- every input has exactly one outcome: a completed task or a typed error;
- no create is sent again for an input after one that may have been processed
  (only a 429 proves a create was not processed);
- every task the provider created is completed in the outcomes, unless its
  create's answer never reached the client (a reset after processing, a
  stall the client gave up on, or an answer that came after the client's
  timeout): then that input's outcome says the create may have happened
  (``APIConnectionError`` with ``request_sent``). Every create the server
  knows it left unanswered must be among these. A journaled run, resumed,
  reports each of them as ``UnconfirmedCreateError`` and never creates it
  again;
- afterwards no asyncio task is left, no session went unclosed and no
  exception went unretrieved (the loop's exception handler heard nothing,
  and no ResourceWarning was issued).

The regular suite (``tests/test_storms.py``) runs a few hundred inputs per
profile; ``python -m tests._storm`` (``nox -s faults``) runs thousands with
the journal and prints the table of counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

import banana_async as ba
from banana_async.testing import (
    FAULT_PROFILES,
    FakeBananaServer,
    FastClock,
    FaultProfile,
    FaultProfileName,
    RecordedRequest,
)

API_KEY = "sk-storm-0123456789abcdef"
# Real seconds: a stall outlasts the client's timeout, a slow answer does not.
# The timeout is generous: on a busy machine a loop can lag, and an answer
# read late is a create the client must report as unconfirmed (it does, and
# the books accept it), but the storm is meant to test the faults.
STALL = 3.0
SLOW = 0.05
CLIENT_TIMEOUT = 1.5
# Seconds of the fake's tasks, on the storm's fast clock.
TASK_SECONDS = 4.0
# Long enough (on the fast clock) that only a bug ends a wait by its deadline.
DEADLINE = 86_400.0


@attrs.define
class StormReport:
    """What one storm counted, and every broken promise it found.

    Attributes:
        profile: The fault profile's name (with the variant, if any).
        inputs: Inputs given to the batch.
        completed: Outcomes with a completed task.
        errors: Outcomes with an error, by the error's type name.
        creates_sent: Create requests the provider received.
        duplicate_creates: Creates sent for an input after one that may have
            been processed (each is a promise broken).
        tasks: Tasks the provider created.
        unanswered: Tasks created whose create the server left unanswered
            (a reset after processing, a stall the client gave up on).
        unconfirmed: Tasks created whose input's outcome says the create may
            have happened (the unanswered ones, and any whose answer came
            after the client's timeout).
        lost: Tasks created that are neither completed in the outcomes nor
            unconfirmed (each is a promise broken).
        resumed_unconfirmed: With a journal, inputs the resumed run reported
            as ``UnconfirmedCreateError``.
        seconds: Real seconds the storm took.
        problems: Every broken promise, in words; empty when all held.
    """

    profile: str
    inputs: int
    completed: int = 0
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    creates_sent: int = 0
    duplicate_creates: int = 0
    tasks: int = 0
    unanswered: int = 0
    unconfirmed: int = 0
    lost: int = 0
    resumed_unconfirmed: int | None = None
    seconds: float = 0.0
    problems: list[str] = attrs.field(factory=list)

    def problem(self, text: str) -> None:
        """Note a broken promise (the first few are kept in full)."""
        self.problems.append(text)


def _not_processed(record: RecordedRequest) -> bool:
    """Whether the client can know a create was not processed: a 429."""
    if record.rate_limited:
        return True
    fault = record.fault
    return (
        fault is not None
        and fault.action == "respond"
        and fault.status_code == 429
        and not fault.process
    )


def _may_have_created(error: BaseException | None) -> bool:
    """An error that tells the caller the create may have happened."""
    return isinstance(error, ba.APIConnectionError) and error.request_sent


class _Watch:
    """Collects what would otherwise vanish: loop exception reports and warnings."""

    def __init__(self) -> None:
        self.reports: list[str] = []

    def handler(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.reports.append(str(context.get("message")) + ": " + repr(context.get("exception")))


def _prompts(name: str, count: int) -> list[str]:
    return [f"storm {name} prompt {i}" for i in range(count)]


async def _run_async(
    client_options: dict[str, Any], prompts: list[str], batch_options: dict[str, Any]
) -> list[ba.Outcome]:
    async with ba.BananaClient(API_KEY, **client_options) as client:
        return [o async for o in client.generate_many(prompts, **batch_options)]


def _run_sync(
    client_options: dict[str, Any], prompts: list[str], batch_options: dict[str, Any]
) -> list[ba.Outcome]:
    with ba.SyncBananaClient(API_KEY, **client_options) as client:
        return list(client.generate_many(prompts, **batch_options))


async def _batch(
    *,
    sync: bool,
    client_options: dict[str, Any],
    prompts: list[str],
    batch_options: dict[str, Any],
) -> list[ba.Outcome]:
    if sync:
        return await asyncio.to_thread(_run_sync, client_options, prompts, batch_options)
    return await _run_async(client_options, prompts, batch_options)


def _check_outcomes(
    report: StormReport, outcomes: list[ba.Outcome], count: int
) -> dict[int, ba.Outcome]:
    by_index: dict[int, ba.Outcome] = {}
    for outcome in outcomes:
        if outcome.index in by_index:
            report.problem(f"input {outcome.index} has two outcomes")
        by_index[outcome.index] = outcome
    missing = set(range(count)) - set(by_index)
    if missing:
        report.problem(f"{len(missing)} inputs have no outcome, e.g. {sorted(missing)[:5]}")
    for outcome in by_index.values():
        if outcome.ok:
            if outcome.task is None or outcome.task.status is not ba.TaskStatus.COMPLETED:
                report.problem(f"input {outcome.index} is ok without a completed task")
            report.completed += 1
            continue
        error = outcome.error
        name = type(error).__name__
        report.errors[name] += 1
        if not isinstance(error, ba.BananaError) or name.startswith("_"):
            report.problem(f"input {outcome.index} ended in an untyped error: {error!r}")
    return by_index


def check_provider(
    report: StormReport,
    server: FakeBananaServer,
    prompts: list[str],
    by_index: dict[int, ba.Outcome],
) -> set[int]:
    """Check the provider's books against the outcomes; the inputs left unconfirmed."""
    index_of = {prompt: i for i, prompt in enumerate(prompts)}
    creates = [r for r in server.requests if r.kind == "create"]
    report.creates_sent = len(creates)
    maybe_processed: collections.Counter[str] = collections.Counter()
    for record in creates:
        prompt = record.json["prompt"] if isinstance(record.json, dict) else None
        if prompt not in index_of:
            report.problem(f"a create for an unknown prompt: {prompt!r}")
            continue
        if maybe_processed[prompt]:
            report.duplicate_creates += 1
        if not _not_processed(record):
            maybe_processed[prompt] += 1
    if report.duplicate_creates:
        report.problem(f"{report.duplicate_creates} creates were sent again after a possible one")
    report.tasks = len(server.tasks)
    per_prompt = collections.Counter(str(t.body["prompt"]) for t in server.tasks.values())
    twice = [p for p, n in per_prompt.items() if n > 1]
    if twice:
        report.problem(f"{len(twice)} inputs have two tasks or more, e.g. {twice[:3]}")
    unanswered = set(server.unanswered_creates())
    report.unanswered = len(unanswered)
    completed = {o.task.id for o in by_index.values() if o.ok and o.task is not None}
    unconfirmed_inputs: set[int] = set()
    for task_id, task in server.tasks.items():
        index = index_of.get(str(task.body["prompt"]))
        if index is None:
            continue
        outcome = by_index.get(index)
        if task_id in completed:
            if outcome is None or outcome.task is None or outcome.task.id != task_id:
                report.problem(f"task {task_id} completed for another input")
        elif outcome is not None and _may_have_created(outcome.error):
            unconfirmed_inputs.add(index)
            report.unconfirmed += 1
        elif task_id in unanswered:
            report.problem(
                f"input {index}: its task {task_id} was created unseen, but its "
                f"outcome does not say a create may have happened: {outcome!r}"
            )
        else:
            report.lost += 1
            report.problem(f"task {task_id} (input {index}) is lost: {outcome!r}")
    return unconfirmed_inputs


def _check_resumed(
    report: StormReport,
    first: dict[int, ba.Outcome],
    resumed: list[ba.Outcome],
    unconfirmed_inputs: set[int],
    count: int,
) -> None:
    """A resumed journaled run: nothing created twice, the unseen ones reported unconfirmed."""
    again = _check_outcomes(StormReport(report.profile, count), resumed, count)
    report.resumed_unconfirmed = 0
    for index, outcome in again.items():
        error = outcome.error
        if isinstance(error, ba.UnconfirmedCreateError):
            report.resumed_unconfirmed += 1
            if error.index != index:
                report.problem(
                    f"input {index}: an UnconfirmedCreateError names input {error.index}"
                )
            continue
        if index in unconfirmed_inputs:
            report.problem(f"input {index}: created unseen, but resumed as {outcome!r}")
        elif first[index].ok and not (outcome.ok and outcome.from_journal):
            report.problem(f"input {index}: completed, but resumed as {outcome!r}")
        elif not outcome.ok:
            report.problem(f"input {index}: resumed on a healthy provider as {error!r}")


async def storm(
    profile: FaultProfileName,
    count: int,
    *,
    seed: int = 1,
    speed: float = 500.0,
    concurrency: int = 50,
    journal: str | Path | None = None,
    batch: str | None = None,
    rate_limit_url: str | None = None,
    sync: bool = False,
    label: str | None = None,
    retry_after: int = 1,
    dialect: str = "nano",
) -> StormReport:
    """Run one storm and check its books (see the module's docstring).

    Args:
        profile: A name of :data:`FAULT_PROFILES`.
        count: Inputs in the batch.
        seed: The fault profile's seed.
        speed: The fast clock's speed.
        concurrency: The batch's concurrency.
        journal: A journal (SQLite path or Postgres URL): the batch is then
            resumed once on a healthy provider, and checked again.
        batch: The batch's name in a Postgres journal.
        rate_limit_url: A Redis URL for a shared request budget.
        sync: Run the batch through :class:`~banana_async.SyncBananaClient`.
        label: The name in the report (default: the profile's).
        dialect: The client's dialect.
        retry_after: The ``Retry-After`` of the profile's 429s, in seconds
            (of the fast clock, but of real time for a Redis budget, which
            keeps its pauses on Redis's clock).

    Returns:
        The report; its ``problems`` are empty when every promise held.
    """
    report = StormReport(label or profile, count)
    watch = _Watch()
    loop = asyncio.get_running_loop()
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(watch.handler)
    threads_before = set(threading.enumerate())
    started = time.monotonic()
    clock = FastClock(speed=speed)
    faults = FaultProfile.named(profile, stall=STALL, slow=SLOW, retry_after=retry_after)
    prompts = _prompts(label or profile, count)
    client_options: dict[str, Any] = {
        "clock": clock,
        "timeout": CLIENT_TIMEOUT,
        "wait_timeout": DEADLINE,
        "rate_limit_url": rate_limit_url or "",
        "dialect": dialect,
    }
    batch_options: dict[str, Any] = {"concurrency": concurrency, "timeout": DEADLINE}
    if journal is not None:
        batch_options["journal"] = str(journal)
        if batch is not None:
            batch_options["batch"] = batch
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with FakeBananaServer(
                api_key=API_KEY, duration=TASK_SECONDS, clock=clock.time, faults=faults, seed=seed
            ) as server:
                client_options["base_url"] = server.url
                outcomes = await _batch(
                    sync=sync,
                    client_options=client_options,
                    prompts=prompts,
                    batch_options=batch_options,
                )
                resumed: list[ba.Outcome] | None = None
                if journal is not None:
                    server.faults = None
                    resumed = await _batch(
                        sync=sync,
                        client_options=client_options,
                        prompts=prompts,
                        batch_options=batch_options,
                    )
            # The server is closed: stalled creates have ended, its books are final.
            by_index = _check_outcomes(report, outcomes, count)
            unconfirmed_inputs = check_provider(report, server, prompts, by_index)
            if resumed is not None:
                _check_resumed(report, by_index, resumed, unconfirmed_inputs, count)
            del outcomes, resumed
            gc.collect()
            await asyncio.sleep(0)
        for warning in caught:
            report.problem(f"a warning: {warning.category.__name__}: {warning.message}")
        left = asyncio.all_tasks() - {asyncio.current_task()}
        if left:
            report.problem(f"{len(left)} asyncio tasks left: {sorted(t.get_name() for t in left)}")
        # The default executor's idle workers (asyncio_N) outlive a storm by design.
        threads = [
            t.name
            for t in set(threading.enumerate()) - threads_before
            if t.is_alive() and not t.name.startswith("asyncio_")
        ]
        if threads:
            report.problem(f"threads left: {threads}")
        for text in watch.reports:
            report.problem(f"the event loop was told: {text}")
    finally:
        loop.set_exception_handler(old_handler)
    report.seconds = time.monotonic() - started
    return report


def table(reports: list[StormReport]) -> str:
    """The counts of several storms as a Markdown table."""
    kinds = sorted({kind for report in reports for kind in report.errors})
    head = ["profile", "inputs", "completed", *kinds, "creates sent", "duplicate creates"]
    head += ["tasks", "unanswered", "unconfirmed", "resumed as unconfirmed", "lost", "seconds"]
    rows = [head, ["---"] * len(head)]
    for r in reports:
        resumed = "-" if r.resumed_unconfirmed is None else str(r.resumed_unconfirmed)
        rows.append(
            [r.profile, str(r.inputs), str(r.completed)]
            + [str(r.errors.get(kind, 0)) for kind in kinds]
            + [str(r.creates_sent), str(r.duplicate_creates), str(r.tasks), str(r.unanswered)]
            + [str(r.unconfirmed)]
            + [resumed, str(r.lost), f"{r.seconds:.0f}"]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _runs(args: argparse.Namespace, folder: Path) -> Iterator[dict[str, Any]]:
    for profile in args.profiles:
        options: dict[str, Any] = {"profile": profile, "count": args.inputs, "seed": args.seed}
        if not args.no_journal:
            options["journal"] = folder / f"{profile}.sqlite"
        yield options


async def _main(args: argparse.Namespace) -> int:
    reports = []
    with tempfile.TemporaryDirectory(prefix="banana-storm-") as folder:
        for options in _runs(args, Path(folder)):
            report = await storm(**options, speed=args.speed, concurrency=args.concurrency)
            print(
                f"{report.profile}: {report.inputs} inputs in {report.seconds:.0f} s, "
                f"{len(report.problems)} problem(s)",
                flush=True,
            )
            reports.append(report)
    print()
    print(table(reports))
    failed = [r for r in reports if r.problems]
    for report in failed:
        print(f"\n{report.profile}: {len(report.problems)} problem(s):", file=sys.stderr)
        for text in report.problems[:20]:
            print(f"  {text}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tests._storm``: the long storms of ``nox -s faults``."""
    parser = argparse.ArgumentParser(prog="python -m tests._storm", description=main.__doc__)
    parser.add_argument("--inputs", type=int, default=5000, help="inputs per profile")
    parser.add_argument(
        "--profiles", nargs="+", default=list(FAULT_PROFILES), choices=FAULT_PROFILES
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=500.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--no-journal", action="store_true", help="run without a journal")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
