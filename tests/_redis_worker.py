"""One worker process of the shared-budget tests: a batch through a client sharing Redis.

``python -m tests._redis_worker BASE_URL REDIS_URL NAME COUNT [RPS]`` runs
COUNT prompts named ``NAME-i`` and prints one JSON line: how many succeeded
and the errors of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import banana_async as ba

from .conftest import API_KEY


async def main(base_url: str, redis_url: str, name: str, count: int, rps: float | None) -> None:
    prompts = [f"{name}-{i}" for i in range(count)]
    errors: list[str] = []
    ok = 0
    async with (
        ba.BananaClient(
            API_KEY,
            base_url=base_url,
            poll_interval=0.02,
            rate_limit_url=redis_url,
            requests_per_second=rps,
        ) as client,
        contextlib.aclosing(client.generate_many(prompts, concurrency=20)) as outcomes,
    ):
        async for outcome in outcomes:
            if outcome.ok:
                ok += 1
            else:
                errors.append(repr(outcome.error))
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)


if __name__ == "__main__":
    base_url, redis_url, name, count, *rest = sys.argv[1:]
    asyncio.run(main(base_url, redis_url, name, int(count), float(rest[0]) if rest else None))
