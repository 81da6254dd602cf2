"""Quickstart: generate images with banana_async against the built-in fake provider.

Runs entirely on this machine: a FakeBananaServer listens on loopback, so no
API key and no network are needed. It shows

* four tasks generated at once with ``asyncio.gather`` (three in the ``nano``
  dialect, one in ``navo``), polled until they finish;
* downloading the finished images with a plain aiohttp GET (image URLs need
  no API key, and expire after about a day on the real service);
* a task that fails, caught as ``TaskFailedError``.

Run it with ``python examples/quickstart.py``; the PNG files land in
``./quickstart-out/``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

import banana_async as ba
from banana_async.testing import FakeBananaServer, TaskScript

OUT_DIR = Path("quickstart-out")

# The fake accepts any key when it was started without one; a real key would
# come from the BANANA_API_KEY environment variable instead.
DEMO_KEY = "demo-key"

# Poll twice a second so the demo is quick. Against the real service keep the
# default of 2 s: the providers rate-limit faster polling.
POLL_INTERVAL = 0.5


async def download(session: aiohttp.ClientSession, task: ba.Task, folder: Path) -> Path:
    """Save a completed task's image to ``folder/<task id>.png``."""
    if task.image_url is None:
        raise ValueError(f"task {task.id} has no image")
    async with session.get(task.image_url, raise_for_status=True) as response:
        data = await response.read()
    path = folder / f"{task.id}.png"
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def main() -> None:
    # Every task takes 3 s to finish, so a few polls are visible.
    async with (
        FakeBananaServer(duration=3.0) as server,
        ba.BananaClient(DEMO_KEY, base_url=server.url, poll_interval=POLL_INTERVAL) as nano,
        ba.BananaClient(
            DEMO_KEY, dialect="navo", base_url=server.url, poll_interval=POLL_INTERVAL
        ) as navo,
    ):
        print(f"fake provider listening on {server.url}")

        tasks = await asyncio.gather(
            nano.generate("a cat on a windowsill", model="nano-banana-2", size="16:9"),
            nano.generate(
                "a lighthouse at dusk, oil painting",
                model=ba.Model.NANO_BANANA_PRO,
                resolution=ba.Resolution.R2K,
                size=ba.AspectRatio.R1_1,
            ),
            nano.generate("a bowl of ramen, top view", model="nano-banana", size="9:16"),
            navo.generate("a paper boat on a pond", model="nano-banana-fast", size="4:3"),
        )
        dialects = ["nano", "nano", "nano", "navo"]
        for dialect, task in zip(dialects, tasks, strict=True):
            print(f"[{dialect}] task {task.id}: {task.status} -> {task.image_url}")

        await asyncio.to_thread(OUT_DIR.mkdir, parents=True, exist_ok=True)
        async with aiohttp.ClientSession() as session:
            paths = await asyncio.gather(*(download(session, t, OUT_DIR) for t in tasks))
        for path in paths:
            size = (await asyncio.to_thread(path.stat)).st_size
            print(f"saved {path} ({size} bytes)")

        # Script the next task to fail, as a moderation refusal would.
        server.plan(TaskScript(outcome="fail", error="content policy violation"))
        try:
            await nano.generate("something the provider refuses")
        except ba.TaskFailedError as exc:
            print(f"failed as expected: {exc}")
            print(f"  task id {exc.task.id}, provider error {exc.error!r}")
        else:
            raise SystemExit("expected the scripted task to fail")


if __name__ == "__main__":
    asyncio.run(main())
