"""One worker of a batch shared through Postgres, run as a subprocess by the tests.

Usage: python _pg_worker.py URL BATCH BASE_URL PROMPTS CONCURRENCY LEASE

Reads the prompts (one a line), runs them with ``generate_many`` on a
:class:`~banana_async.journal.PostgresStore`, and prints one JSON line per
outcome it yields (flushed at once, so that a killed worker's lines stay).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import banana_async as ba
from banana_async.journal import PostgresStore

API_KEY = "sk-test-0123456789abcdef"


async def main(argv: list[str]) -> None:
    url, batch, base_url, prompts, concurrency, lease = argv
    lines = Path(prompts).read_text(encoding="utf-8").splitlines()
    async with (
        await PostgresStore.open(url, batch=batch, lease=float(lease)) as store,
        ba.BananaClient(API_KEY, base_url=base_url, poll_interval=0.1, timeout=600) as client,
    ):
        async for outcome in client.generate_many(
            lines, concurrency=int(concurrency), journal=store
        ):
            record = {
                "index": outcome.index,
                "ok": outcome.ok,
                "task_id": outcome.task.id if outcome.task is not None else None,
                "from_journal": outcome.from_journal,
                "error_type": type(outcome.error).__name__ if outcome.error else None,
                "error": str(outcome.error) if outcome.error else None,
                "worker": store.worker,
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
