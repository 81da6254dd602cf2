"""The fake provider for the benchmarks, in a process of its own.

Runs :class:`banana_async.testing.FakeBananaServer` on 127.0.0.1 (a free
port), prints its URL as the first line of stdout, and serves until stdin
closes or SIGTERM (or SIGINT) arrives. Running it apart from the client keeps
the server's CPU time and memory out of the client's figures.

Task behaviour (``--mode``):

* ``instant2``: every task answers ``processing`` to its first status query
  and ``completed`` to its second, whatever the time (``TaskScript.queries``),
  so each task costs exactly one create and two queries.
* ``fixed --duration S``: every task completes S seconds after its creation.
* ``uniform --min A --max B --seed N``: durations uniform in [A, B] seconds.
  The duration is drawn from a generator seeded with the seed *and the
  prompt*, so a prompt gets the same duration in every run and every variant
  faces the same tasks, whatever order the creates arrive in.

How detection delay is measured: the server's clock here is
:func:`time.monotonic`, and every task's true finish time is its
``created_at + duration`` on that clock (exactly the ``finished_at`` the fake
computes; no guessing). On Linux ``time.monotonic`` reads CLOCK_MONOTONIC,
which is one clock for the whole machine, so the client process can compare
its own ``time.monotonic()`` reading of when the caller saw the task done with
these finish times directly. (Taking "create response received + scripted
duration" on the client side instead would start each task late by the
response's transit time and understate the delay.) With ``--dump PATH`` the
provider writes every task's creation time, finish time and status-query
count to ``PATH`` as JSON when it shuts down, and how many requests it
received and refused with 429, in total and by kind.

Rate limit (``--rate R [--burst B] [--no-retry-after]``): the provider's
per-key budget, a :class:`~banana_async.testing.RequestBudget` of ``R``
requests per second with a burst of ``B`` (default ``max(1, R)``). Creates
and status queries beyond it are answered 429, with a ``Retry-After`` header
unless ``--no-retry-after``; a refused create creates no task.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from banana_async.testing import FakeBananaServer, RequestBudget, TaskScript

API_KEY = "sk-bench"
TRIM_EVERY = 2.0
"""Seconds between clearings of the server's request log (see ``_trim``)."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("instant2", "fixed", "uniform"), default="instant2")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds (fixed mode)")
    parser.add_argument("--min", type=float, default=5.0, help="seconds (uniform mode)")
    parser.add_argument("--max", type=float, default=15.0, help="seconds (uniform mode)")
    parser.add_argument("--seed", type=int, default=0, help="seed (uniform mode)")
    parser.add_argument("--api-key", default=API_KEY)
    parser.add_argument("--dump", type=Path, help="write per-task timings here on shutdown")
    parser.add_argument("--rate", type=float, help="requests per second per key (default: none)")
    parser.add_argument("--burst", type=float, help="bucket size with --rate (default max(1, R))")
    parser.add_argument(
        "--no-retry-after", action="store_true", help="429s without Retry-After (with --rate)"
    )
    args = parser.parse_args(argv)
    args.budget = None
    if args.rate is not None:
        try:
            args.budget = RequestBudget(args.rate, args.burst, retry_after=not args.no_retry_after)
        except ValueError as exc:
            parser.error(str(exc))
    elif args.burst is not None or args.no_retry_after:
        parser.error("--burst and --no-retry-after need --rate")
    if args.mode == "uniform" and not 0 <= args.min <= args.max:
        parser.error("uniform mode needs 0 <= --min <= --max")
    if args.mode == "fixed" and args.duration < 0:
        parser.error("--duration must be >= 0")
    return args


ScriptFor = Callable[[dict[str, Any]], TaskScript | None]


def _script_for(args: argparse.Namespace) -> ScriptFor:
    """The server's ``script_for`` hook for the chosen mode."""
    if args.mode == "instant2":
        script = TaskScript(queries=2)
        return lambda body: script
    if args.mode == "fixed":
        fixed = TaskScript(duration=args.duration)
        return lambda body: fixed

    def uniform(body: dict[str, Any]) -> TaskScript:
        rng = random.Random(f"{args.seed}/{body.get('prompt')}")
        return TaskScript(duration=rng.uniform(args.min, args.max))

    return uniform


def raise_open_files_limit(wanted: int = 20_000) -> None:
    """Raise the soft limit on open files towards ``wanted`` (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` once stdin reaches end of file (the parent closed it or died)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no usable stdin: only a signal stops it
        return

    def read() -> None:
        # os.read on the raw descriptor: a thread blocked in sys.stdin's buffered
        # reader would hold its lock and abort the interpreter's shutdown.
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        with contextlib.suppress(RuntimeError):  # the loop may be gone already
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read, name="stdin-watch", daemon=True).start()


class Tally:
    """Requests received and refused with 429 by the budget, by kind, across trims."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        # When each create and query the budget let through arrived (part d
        # measures how much of the budget a client used), and when each 429
        # was sent (part d's charts show the 429s over time).
        self.accepted_at: list[float] = []
        self.limited_at: list[float] = []  # when each 429 was answered (parts d and g)

    def take(self, server: FakeBananaServer) -> None:
        """Count the server's request log, then clear it."""
        for record in server.requests:
            self.received[record.kind] += 1
            if record.rate_limited:
                self.rate_limited[record.kind] += 1
                self.limited_at.append(record.at)
            elif record.kind in ("create", "query"):
                self.accepted_at.append(record.at)
        server.requests.clear()

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.received.total(),
            "by_kind": dict(self.received),
            "rate_limited": {
                "total": self.rate_limited.total(),
                "by_kind": dict(self.rate_limited),
                "at": self.limited_at,
            },
            "accepted_at": self.accepted_at,
            "limited_at": self.limited_at,
        }


async def _trim(server: FakeBananaServer, tally: Tally) -> None:
    """Keep the request log from growing without bound over a long run.

    The benchmarks count queries per task through ``FakeTask.queries`` and
    requests through ``tally``, so the log of every request (with a copy of
    each one's headers) is not kept; a run of 10,000 tasks would otherwise
    keep tens of thousands of records.
    """
    while True:
        await asyncio.sleep(TRIM_EVERY)
        tally.take(server)


def _dump(server: FakeBananaServer, tally: Tally, path: Path) -> None:
    tasks = {
        task.id: {
            "prompt": task.body.get("prompt"),
            "created_at": task.created_at,
            "finished_at": task.finished_at,
            "queries": task.queries,
        }
        for task in server.tasks.values()
    }
    dump = {"clock": "time.monotonic", "tasks": tasks, "requests": tally.as_json()}
    path.write_text(json.dumps(dump))


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = FakeBananaServer(
        api_key=args.api_key, host="127.0.0.1", port=0, clock=time.monotonic, budget=args.budget
    )
    server.script_for = _script_for(args)
    tally = Tally()
    async with server:
        print(server.url, flush=True)
        _watch_stdin(loop, stop)
        trimmer = asyncio.create_task(_trim(server, tally))
        await stop.wait()
        trimmer.cancel()
    tally.take(server)
    if args.dump is not None:
        _dump(server, tally, args.dump)


def main(argv: list[str] | None = None) -> None:
    raise_open_files_limit()
    asyncio.run(serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
