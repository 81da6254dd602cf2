"""``banana-async demo``: a real batch against the built-in fake provider.

The only command that needs :mod:`banana_async.testing` (and so ``aiohttp.web``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from banana_async.cli.commands.batch import manifest_record, open_manifest
from banana_async.cli.common import (
    RunState,
    check_defaults,
    consume,
    prepare_out,
    request_defaults,
)
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.gallery import make_gallery
from banana_async.cli.output import Shown, emit, error_of, json_line, prompt_of, to_stdout
from banana_async.cli.progress import Progress, Stats, duration
from banana_async.client import BananaClient
from banana_async.models import GenerationRequest, request_from
from banana_async.testing import FakeBananaServer, TaskScript

if TYPE_CHECKING:
    from banana_async.models import BatchInput, Outcome

__all__ = ["DEMO_DURATIONS", "DEMO_FAILURE", "DEMO_KEY", "DEMO_PROMPTS", "run"]

DEMO_DURATIONS: Final = (0.5, 3.0)
"""Range of the fake tasks' random durations in the demo, in seconds."""
DEMO_KEY: Final = "demo-key-not-secret"
"""The fake provider of the demo accepts any key; this one is not a secret."""
DEMO_FAILURE: Final = "content policy violation"
"""The error of the prompts scripted to fail."""

# The demo's prompts; the ones marked True are scripted to fail.
DEMO_PROMPTS: Final[tuple[tuple[str, str, bool], ...]] = (
    ("a cat asleep on a sunny windowsill, watercolour", "4:3", False),
    ("a lighthouse at dusk, oil painting", "16:9", False),
    ("a copyrighted cartoon mouse (the provider refuses this one)", "1:1", True),
    ("a bowl of ramen seen from above, flat lay photo", "1:1", False),
    ("a paper boat on a pond after the rain", "3:2", False),
    ("a fox in a snowy forest at night, moonlight", "9:16", False),
    ("an isometric tiny island with a windmill", "1:1", False),
    ("a vintage robot reading a newspaper", "4:5", False),
    ("a hot air balloon over lavender fields", "16:9", False),
    ("a banana-shaped spaceship landing on the moon", "21:9", False),
    ("a cosy library with a fireplace, pixel art", "4:3", False),
    ("a famous footballer's face on a banknote (the provider refuses this one)", "3:4", True),
    ("a koi pond from above, ink wash painting", "1:1", False),
    ("a steam train crossing a stone viaduct", "16:9", False),
    ("a jar of fireflies on a picnic blanket", "2:3", False),
    ("a street market in the rain, neon signs", "9:16", False),
    ("a snail carrying a tiny house, macro photo", "5:4", False),
    ("a mountain cabin under the northern lights", "16:9", False),
    ("a stack of pancakes with blueberries, studio light", "1:1", False),
    ("an origami crane made of a treasure map", "3:2", False),
)


def _requests(args: argparse.Namespace, count: int) -> list[tuple[GenerationRequest, bool]]:
    requests = []
    for number in range(count):
        prompt, size, fails = DEMO_PROMPTS[number % len(DEMO_PROMPTS)]
        take = number // len(DEMO_PROMPTS)
        if take:
            prompt = f"{prompt}, take {take + 1}"
        fields = request_defaults(args)
        fields["size"] = fields["size"] or size
        requests.append((request_from(prompt, **fields), fails))
    return requests


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Run the demo; exit 0 when it went as scripted, 1 otherwise."""
    count: int = args.count
    defaults = request_defaults(args)
    check_defaults(args, defaults)
    out = await prepare_out(args.out)
    requests = _requests(args, count)
    scripted = {request.prompt for request, fails in requests if fails}
    rng = random.Random()

    def script_for(body: dict[str, Any]) -> TaskScript:
        task_duration = rng.uniform(*DEMO_DURATIONS)
        if body.get("prompt") in scripted:
            return TaskScript(duration=task_duration, outcome="fail", error=DEMO_FAILURE)
        return TaskScript(duration=task_duration)

    stats = Stats(total=count, concurrency=count)
    state.stats = stats
    human = not (args.json or args.quiet)

    def show(outcome: Outcome) -> Shown:
        error, error_type = error_of(outcome)
        prompt = prompt_of(outcome)
        return Shown(
            outcome,
            where=f"#{outcome.index}",
            line=None,
            prompt=prompt,
            error=error,
            error_type=error_type,
            expected=not outcome.ok and prompt in scripted,
            seconds=stats.took(outcome.index),
        )

    def inputs() -> Iterator[BatchInput]:
        for request, _ in requests:
            stats.read += 1
            yield request

    async with FakeBananaServer(duration=DEMO_DURATIONS[1]) as server:
        server.script_for = script_for
        if human:
            to_stdout(
                f"banana-async demo: {count} prompts against a fake provider at {server.url} "
                f"({args.dialect} dialect; no API key, no network)."
            )
            if scripted:
                to_stdout(
                    f"{len(scripted)} of them "
                    f"{'is' if len(scripted) == 1 else 'are'} scripted to fail, to show "
                    "how a batch reports failures without stopping."
                )
        async with BananaClient(
            DEMO_KEY,
            dialect=args.dialect,
            base_url=server.url,
            poll_interval=args.poll_interval,
            allow_unknown_models=args.allow_unknown_models,
        ) as client:
            progress = Progress(stats, "demo", enabled=human, interval=1.0)
            outcomes = client.generate_many(
                inputs(),
                concurrency=count,
                timeout=args.timeout,
                download_to=out,
                on_status=progress.on_status,
            )
            # The same manifest as a batch's: the gallery is made from it.
            with await asyncio.to_thread(open_manifest, out) as manifest:
                state.manifest = manifest.name

                def report(shown: Shown) -> None:
                    manifest.write(json_line(manifest_record(shown)) + "\n")
                    manifest.flush()
                    emit(args, shown)

                async with progress:
                    await consume(outcomes, progress, stats, show, report)
    page = await make_gallery(out)
    return _summary(args, stats, out, scripted_count=len(scripted), page=page)


def _summary(
    args: argparse.Namespace, stats: Stats, out: Path, *, scripted_count: int, page: Path | None
) -> ExitCode:
    unexpected = stats.failed - stats.expected_failures
    as_designed = unexpected == 0 and stats.expected_failures == scripted_count
    if args.json or (args.quiet and as_designed):
        pass
    elif as_designed:
        to_stdout(
            f"demo finished as designed: {stats.ok} images saved in {out}/, "
            f"{stats.expected_failures} failed as scripted (expected), 0 unexpected "
            f"failures, in {duration(stats.elapsed())}."
        )
    else:
        to_stdout(
            f"demo did NOT go as designed: {stats.ok} images saved in {out}/, "
            f"{unexpected} unexpected failure(s), {stats.expected_failures} of "
            f"{scripted_count} scripted failure(s) seen."
        )
    if page is not None and not (args.json or args.quiet):
        # The URL too: many terminals open it on a click.
        to_stdout(f"gallery: {page}; open it in a browser: {page.resolve().as_uri()}")
    return ExitCode.OK if as_designed else ExitCode.FAILED
