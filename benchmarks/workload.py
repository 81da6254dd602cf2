"""One measured client run, in a fresh process; ``bench.py`` starts one per variant.

Usage: ``python benchmarks/workload.py SPEC_JSON``. The spec names the part
(``cpu``, ``memory``, ``polling`` or ``ratelimit``), the variant and its
sizes; the result is printed as one JSON line on stdout.

Variants:

* ``banana``: :meth:`banana_async.BananaClient.generate_many`.
* ``banana-fixed``: the same with ``adaptive_polling=False``.
* ``banana-journal``: ``banana-fixed`` with a journal (a new SQLite file per batch).
* ``banana-events``: ``banana-fixed`` with a no-op ``on_status`` listener on the batch.
* ``aiohttp``: a plain loop with one :class:`aiohttp.ClientSession`: POST the
  create, then ``asyncio.sleep(interval)`` and GET until the status is
  terminal, ``json.loads`` on every body, a semaphore for the concurrency.
* ``httpx``: the same loop with :class:`httpx.AsyncClient`.
* ``fixed``: the aiohttp loop used as the fixed-interval poller of the
  polling part (it sleeps exactly ``interval`` between queries).

The plain loops send the same requests as banana_async: the same JSON create
body, the same Authorization/Accept/Content-Type headers, one connection pool
of the same size.

The ``ratelimit`` part has no variants: it runs ``generate_many`` on a client
built with the spec's ``client_options`` (keyword arguments of
:class:`banana_async.BananaClient`, plus ``limiter``: keyword arguments of an
:class:`~banana_async.ratelimit.AdaptiveRateLimiter` to give it; none gives
the default client), so a new
client setting is measured by adding an entry on the ``bench.py`` side.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

import banana_async as ba
from banana_async.ratelimit import AdaptiveRateLimiter

API_KEY = "sk-bench"
MODEL = "nano-banana-2"
CREATE_PATH = "/v1/banana/images"
QUERY_PATH = "/v1/result/"
TERMINAL = frozenset({"completed", "failed"})
GENEROUS = 900.0
"""Seconds for every deadline: nothing may time out in a benchmark."""

Seen = list[tuple[int, str, float]]
"""(input index, task id, time.monotonic() when the caller saw it done)."""


def prompts(count: int, prefix: str = "bench task") -> list[str]:
    """The prompts every variant sends (the provider derives durations from them)."""
    return [f"{prefix} {i}" for i in range(count)]


def create_body(prompt: str) -> bytes:
    """The create body, byte for byte what banana_async sends for a plain prompt."""
    return json.dumps(
        {"prompt": prompt, "model": MODEL, "image_urls": []}, ensure_ascii=False
    ).encode()


def max_rss_kib() -> int:
    """Peak resident set size of this process so far (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def raise_open_files_limit(wanted: int) -> None:
    """Raise the soft limit on open files to ``wanted`` if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- banana_async -------------------------------------------------------------------


def banana_client(spec: dict[str, Any]) -> ba.BananaClient:
    return ba.BananaClient(
        API_KEY,
        base_url=spec["url"],
        poll_interval=spec["interval"],
        wait_timeout=GENEROUS,
        timeout=GENEROUS,
        connect_timeout=GENEROUS,
        connection_limit=spec["connections"],
        adaptive_polling=spec.get("adaptive", True),
    )


async def banana_batch(
    client: ba.BananaClient,
    batch: list[str],
    concurrency: int,
    seen: Seen | None = None,
    journal: str | None = None,
    on_status: ba.OnStatus | None = None,
) -> int:
    ok = 0
    async for outcome in client.generate_many(
        batch, concurrency=concurrency, journal=journal, on_status=on_status
    ):
        if seen is not None and outcome.task is not None:
            seen.append((outcome.index, outcome.task.id, time.monotonic()))
        ok += outcome.ok
    return ok


# -- plain loops ----------------------------------------------------------------------


Batch = Callable[[list[str], Seen | None], Awaitable[int]]


def _plain_batch(one: Callable[[str], Awaitable[dict[str, Any]]], concurrency: int) -> Batch:
    """Run ``one`` over a batch, ``concurrency`` at a time, in input order."""

    async def batch(items: list[str], seen: Seen | None) -> int:
        semaphore = asyncio.Semaphore(concurrency)
        ok = 0

        async def guarded(index: int, prompt: str) -> None:
            nonlocal ok
            async with semaphore:
                task = await one(prompt)
            if seen is not None:
                seen.append((index, str(task["id"]), time.monotonic()))
            ok += task["status"] == "completed"

        await asyncio.gather(*(guarded(i, p) for i, p in enumerate(items)))
        return ok

    return batch


def aiohttp_session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=0),
        headers={"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"},
        timeout=aiohttp.ClientTimeout(total=GENEROUS),
    )


def aiohttp_one(
    session: aiohttp.ClientSession, url: str, interval: float
) -> Callable[[str], Awaitable[dict[str, Any]]]:
    create_url = url + CREATE_PATH
    query_url = url + QUERY_PATH
    content_type = {"Content-Type": "application/json"}

    async def one(prompt: str) -> dict[str, Any]:
        async with session.post(create_url, data=create_body(prompt), headers=content_type) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"create: HTTP {r.status}")
        task: dict[str, Any] = json.loads(body)
        while True:
            await asyncio.sleep(interval)
            async with session.get(query_url + task["id"]) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"query: HTTP {r.status}")
            task = json.loads(body)
            if task["status"] in TERMINAL:
                return task

    return one


async def run_plain_aiohttp(
    spec: dict[str, Any], measure: Callable[[Batch], Awaitable[None]]
) -> None:
    async with aiohttp_session(spec["connections"]) as session:
        one = aiohttp_one(session, spec["url"], spec["interval"])
        await measure(_plain_batch(one, spec["concurrency"]))


async def run_plain_httpx(
    spec: dict[str, Any], measure: Callable[[Batch], Awaitable[None]]
) -> None:
    import httpx  # only this variant needs it (installed by the bench session)

    limits = httpx.Limits(
        max_connections=spec["connections"], max_keepalive_connections=spec["connections"]
    )
    headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}
    create_url = spec["url"] + CREATE_PATH
    query_url = spec["url"] + QUERY_PATH
    interval = spec["interval"]
    content_type = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=GENEROUS) as client:

        async def one(prompt: str) -> dict[str, Any]:
            r = await client.post(create_url, content=create_body(prompt), headers=content_type)
            if r.status_code != 200:
                raise RuntimeError(f"create: HTTP {r.status_code}")
            task: dict[str, Any] = json.loads(r.content)
            while True:
                await asyncio.sleep(interval)
                r = await client.get(query_url + task["id"])
                if r.status_code != 200:
                    raise RuntimeError(f"query: HTTP {r.status_code}")
                task = json.loads(r.content)
                if task["status"] in TERMINAL:
                    return task

        await measure(_plain_batch(one, spec["concurrency"]))


async def run_banana(spec: dict[str, Any], measure: Callable[[Batch], Awaitable[None]]) -> None:
    async with banana_client(spec) as client:

        async def batch(items: list[str], seen: Seen | None) -> int:
            return await banana_batch(client, items, spec["concurrency"], seen)

        await measure(batch)


async def run_banana_journal(
    spec: dict[str, Any], measure: Callable[[Batch], Awaitable[None]]
) -> None:
    """``banana-fixed`` with a journal: a new SQLite file for every batch, as a new batch has."""
    numbers = itertools.count()
    with tempfile.TemporaryDirectory(prefix="banana-bench-journal-") as tmp:
        async with banana_client({**spec, "adaptive": False}) as client:

            async def batch(items: list[str], seen: Seen | None) -> int:
                path = f"{tmp}/batch-{next(numbers)}.sqlite"
                return await banana_batch(client, items, spec["concurrency"], seen, path)

            await measure(batch)


def ignore(event: ba.TaskEvent) -> None:
    """A listener that does nothing: what remains is the price of the events themselves."""


async def run_banana_events(
    spec: dict[str, Any], measure: Callable[[Batch], Awaitable[None]]
) -> None:
    """``banana-fixed`` with a no-op ``on_status`` listener on every batch."""
    async with banana_client({**spec, "adaptive": False}) as client:

        async def batch(items: list[str], seen: Seen | None) -> int:
            return await banana_batch(client, items, spec["concurrency"], seen, on_status=ignore)

        await measure(batch)


async def run_banana_fixed(
    spec: dict[str, Any], measure: Callable[[Batch], Awaitable[None]]
) -> None:
    await run_banana({**spec, "adaptive": False}, measure)


RUNNERS = {
    "banana": run_banana,
    "banana-fixed": run_banana_fixed,
    "banana-journal": run_banana_journal,
    "banana-events": run_banana_events,
    "aiohttp": run_plain_aiohttp,
    "fixed": run_plain_aiohttp,
    "httpx": run_plain_httpx,
}


# -- the three parts --------------------------------------------------------------------


async def part_cpu(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU time of this process for ``count`` tasks, after one warm-up batch."""
    result: dict[str, Any] = {}

    async def measure(batch: Batch) -> None:
        await batch(prompts(spec["warmup"], "warm-up"), None)
        items = prompts(spec["count"])
        wall, cpu = time.perf_counter(), time.process_time()
        ok = await batch(items, None)
        result["cpu_s"] = time.process_time() - cpu
        result["wall_s"] = time.perf_counter() - wall
        result["ok"] = ok

    await RUNNERS[spec["variant"]](spec, measure)
    return result


async def part_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS with every task in flight, and its rise above the ready-to-go baseline."""
    result: dict[str, Any] = {}
    items = prompts(spec["count"])

    async def measure(batch: Batch) -> None:
        # After the imports, the prompts and the open session: what is left to
        # grow is what the run itself needs.
        result["baseline_rss_kib"] = max_rss_kib()
        wall = time.perf_counter()
        result["ok"] = await batch(items, None)
        result["wall_s"] = time.perf_counter() - wall
        result["peak_rss_kib"] = max_rss_kib()

    await RUNNERS[spec["variant"]](spec, measure)
    return result


async def part_polling(spec: dict[str, Any]) -> dict[str, Any]:
    """When the caller saw each task done (queries are counted by the provider)."""
    result: dict[str, Any] = {}

    async def measure(batch: Batch) -> None:
        seen: Seen = []
        wall = time.perf_counter()
        result["ok"] = await batch(prompts(spec["count"]), seen)
        result["wall_s"] = time.perf_counter() - wall
        result["seen"] = seen

    await RUNNERS[spec["variant"]](spec, measure)
    return result


async def part_ratelimit(spec: dict[str, Any]) -> dict[str, Any]:
    """One batch against a rate-limited provider: what completed, what was lost, how fast.

    The client is the default one but for ``spec["client_options"]``; the
    429s and the status queries are counted by the provider. With
    ``start_at`` (a :func:`time.time`), the batch waits for that moment, so
    that several processes started together begin together, whatever each
    one's imports cost; ``name`` prefixes the prompts (default ``bench task``).
    """
    items = prompts(spec["count"], spec.get("name", "bench task"))
    errors: Counter[str] = Counter()
    ok = 0
    options = dict(spec["client_options"])
    limiter = options.pop("limiter", None)
    if limiter is not None:
        # Options of the client's own limiter, given whole (JSON cannot carry one).
        options["rate_limiter"] = AdaptiveRateLimiter(**limiter)
    # time.monotonic(), the provider's clock, for the time series of bench.py's charts.
    done_at: list[float] = []
    async with ba.BananaClient(API_KEY, base_url=spec["url"], **options) as client:
        start_at = spec.get("start_at")
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        started_at = time.monotonic()
        wall = time.perf_counter()
        async for outcome in client.generate_many(items, concurrency=spec["concurrency"]):
            if outcome.ok:
                ok += 1
                done_at.append(time.monotonic())
            else:
                errors[type(outcome.error).__name__] += 1
        wall_s = time.perf_counter() - wall
    return {
        "ok": ok,
        "errors": dict(errors),
        "wall_s": wall_s,
        "started_at": started_at,
        "done_at": done_at,
    }


async def part_alternating(spec: dict[str, Any]) -> dict[str, Any]:
    """``variant`` and ``banana-fixed`` batches in turn, in one process and on one client.

    Each round runs both, in alternating order, back to back: the two
    batches of a round share the machine's conditions of that moment far
    more closely than two processes started one after the other (a new
    process, a new provider, a cold heap). CPU time is this process's,
    the journal's thread included. ``variant`` is ``banana-journal`` (a new
    SQLite file per batch, as a new batch has) or ``banana-events``.
    """
    variant = spec["variant"]
    if variant not in ("banana-journal", "banana-events"):
        raise ValueError(f"no alternating run for variant {variant!r}")
    kinds = (variant, "banana-fixed")
    result: dict[str, Any] = {
        key: {kind: [] for kind in kinds} for key in ("cpu_s", "wall_s", "ok")
    }
    numbers = itertools.count()
    with tempfile.TemporaryDirectory(prefix="banana-bench-alternating-") as tmp:
        async with banana_client({**spec, "adaptive": False}) as client:

            async def batch(kind: str, items: list[str]) -> tuple[float, float, int]:
                journal = on_status = None
                if kind == "banana-journal":
                    journal = f"{tmp}/batch-{next(numbers)}.sqlite"
                elif kind == "banana-events":
                    on_status = ignore
                wall, cpu = time.perf_counter(), time.process_time()
                ok = await banana_batch(
                    client, items, spec["concurrency"], journal=journal, on_status=on_status
                )
                return time.process_time() - cpu, time.perf_counter() - wall, ok

            for kind in kinds:
                await batch(kind, prompts(spec["warmup"], "warm-up"))
            items = prompts(spec["count"])
            for round_ in range(spec["rounds"]):
                for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                    cpu_s, wall_s, ok = await batch(kind, items)
                    result["cpu_s"][kind].append(cpu_s)
                    result["wall_s"][kind].append(wall_s)
                    result["ok"][kind].append(ok)
    return result


PARTS = {
    "alternating": part_alternating,
    "cpu": part_cpu,
    "memory": part_memory,
    "polling": part_polling,
    "ratelimit": part_ratelimit,
}


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    raise_open_files_limit(max(4096, 2 * spec["connections"] + 1024))
    result = asyncio.run(PARTS[spec["part"]](spec))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
