"""``banana-async demo``: a real batch against the built-in fake provider.

The only command that needs :mod:`banana_async.testing` (and so ``aiohttp.web``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from banana_async.cli.commands.batch import manifest_record, open_manifest, tell_gallery
from banana_async.cli.common import (
    RunState,
    check_defaults,
    consume,
    prepare_out,
    request_defaults,
)
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.gallery import gallery_line, make_gallery, new_run
from banana_async.cli.output import Shown, emit, error_of, json_line, prompt_of, to_stdout
from banana_async.cli.progress import Progress, Stats, duration
from banana_async.client import DEFAULT_TIMEOUT, BananaClient
from banana_async.errors import APIConnectionError, InvalidRequestError, TaskFailedError
from banana_async.models import GenerationRequest, request_from
from banana_async.testing import FakeBananaServer, FaultProfile, RecordedRequest, TaskScript

if TYPE_CHECKING:
    from banana_async.models import BatchInput, Outcome

__all__ = [
    "DEMO_DURATIONS",
    "DEMO_FAILURE",
    "DEMO_KEY",
    "DEMO_PROMPTS",
    "DEMO_REQUEST_TIMEOUT",
    "DEMO_SLOW",
    "DEMO_STALL",
    "run",
]

DEMO_DURATIONS: Final = (0.5, 3.0)
"""Range of the fake tasks' random durations in the demo, in seconds."""
DEMO_KEY: Final = "demo-key-not-secret"
"""The fake provider of the demo accepts any key; this one is not a secret."""
DEMO_FAILURE: Final = "content policy violation"
"""The error of the prompts scripted to fail."""
DEMO_STALL: Final = 3.0
"""With ``--faults``: seconds of a stall, past the client's request timeout."""
DEMO_SLOW: Final = 0.2
"""With ``--faults``: seconds of a slow answer, inside the client's request timeout."""
DEMO_REQUEST_TIMEOUT: Final = 1.5
"""With ``--faults``: the client's request timeout, so that a stall costs seconds, not a minute."""

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


def _plural(count: int, word: str, words: str | None = None) -> str:
    """``1 image``, ``2 images``: a count and its noun."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def _faults(args: argparse.Namespace) -> tuple[FaultProfile | None, int]:
    """The fault profile asked for (None for none) and its seed (drawn if not given).

    Raises:
        InvalidRequestError: ``--seed`` without ``--faults``: ignored, it
            would suggest a run that can be repeated.
    """
    if args.faults is None:
        if args.seed is not None:
            raise InvalidRequestError(
                "--seed needs --faults PROFILE: it seeds the fault profile's draws "
                "(the demo's task durations are not seeded)"
            )
        return None, 0
    profile = FaultProfile.named(args.faults, stall=DEMO_STALL, slow=DEMO_SLOW)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    return profile, seed


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Run the demo; exit 0 when it went as scripted, 1 otherwise.

    Raises:
        InvalidRequestError: ``--seed`` without ``--faults`` (nothing is started).
    """
    profile, seed = _faults(args)
    count: int = args.count
    defaults = request_defaults(args)
    check_defaults(args, defaults)
    out = await prepare_out(args.out)
    requests = _requests(args, count)
    scripted = {request.prompt for request, fails in requests if fails}
    rng = random.Random()
    # The error type of each prompt whose create an injected fault broke
    # (a prompt scripted to fail among them never reached the provider's
    # refusal); and the outcome of each prompt, for the books at the end.
    broken: dict[str, str] = {}
    outcome_of: dict[str, Outcome] = {}
    run_mark = new_run()

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
        if prompt is not None:
            outcome_of[prompt] = outcome
        as_scripted = isinstance(outcome.error, TaskFailedError) and prompt in scripted
        # Only creates can break: the profiles never end a wait or a download.
        by_fault = profile is not None and not outcome.ok and outcome.task is None
        if by_fault and error_type is not None and prompt is not None:
            broken[prompt] = error_type
        return Shown(
            outcome,
            where=f"#{outcome.index}",
            line=None,
            prompt=prompt,
            error=error,
            error_type=error_type,
            expected=as_scripted or by_fault,
            why_expected="injected fault" if by_fault else "scripted by the demo",
            seconds=stats.took(outcome.index),
        )

    def inputs() -> Iterator[BatchInput]:
        for request, _ in requests:
            stats.read += 1
            yield request

    async with FakeBananaServer(duration=DEMO_DURATIONS[1], faults=profile, seed=seed) as server:
        server.script_for = script_for
        _announce(args, server.url, profile, seed, len(scripted))
        async with BananaClient(
            DEMO_KEY,
            dialect=args.dialect,
            base_url=server.url,
            poll_interval=args.poll_interval,
            allow_unknown_models=args.allow_unknown_models,
            timeout=DEFAULT_TIMEOUT if profile is None else DEMO_REQUEST_TIMEOUT,
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
                    manifest.write(json_line(manifest_record(shown, run_mark)) + "\n")
                    manifest.flush()
                    emit(args, shown)

                async with progress:
                    await consume(outcomes, progress, stats, show, report)
    if profile is None:
        code = _summary(args, stats, out, scripted_count=len(scripted))
    else:
        # The server is closed: stalled creates have ended, its books are final.
        books = _Books.check(server, outcome_of)
        code = _fault_summary(
            args,
            stats,
            out,
            profile=profile.name,
            seed=seed,
            broken=collections.Counter(broken.values()),
            books=books,
            scripted=(len(scripted), len(scripted & broken.keys())),
        )
    await _gallery(args, out, run_mark)
    return code


def _announce(
    args: argparse.Namespace, url: str, profile: FaultProfile | None, seed: int, scripted: int
) -> None:
    """Say what the demo is about to do (unless --json or --quiet)."""
    if args.json or args.quiet:
        return
    to_stdout(
        f"banana-async demo: {args.count} prompts against a fake provider at {url} "
        f"({args.dialect} dialect; no API key, no network)."
    )
    if profile is not None:
        to_stdout(
            f"The provider is {profile.name} (fault profile {profile.name!r}, seed "
            f"{seed}: repeat with --faults {profile.name} --seed {seed})."
        )
    if scripted:
        to_stdout(
            f"{scripted} of them {'is' if scripted == 1 else 'are'} scripted to fail, to show "
            "how a batch reports failures without stopping."
        )


async def _gallery(args: argparse.Namespace, out: Path, run: str) -> None:
    """Write the gallery page from the demo's manifest, and say where it is."""
    gallery = await make_gallery(out, run=run)
    if gallery is None:
        return
    if args.json or args.quiet:
        tell_gallery(args, gallery)
    else:
        to_stdout(gallery_line(gallery))


def _summary(args: argparse.Namespace, stats: Stats, out: Path, *, scripted_count: int) -> ExitCode:
    unexpected = stats.failed - stats.expected_failures
    as_designed = unexpected == 0 and stats.expected_failures == scripted_count
    if args.json or (args.quiet and as_designed):
        pass
    elif as_designed:
        to_stdout(
            f"demo finished as designed: {_plural(stats.ok, 'image')} saved in {out}/, "
            f"{stats.expected_failures} failed as scripted (expected), 0 unexpected "
            f"failures, in {duration(stats.elapsed())}."
        )
    else:
        to_stdout(
            f"demo did NOT go as designed: {_plural(stats.ok, 'image')} saved in {out}/, "
            f"{_plural(unexpected, 'unexpected failure')}, {stats.expected_failures} of "
            f"the {_plural(scripted_count, 'scripted failure')} seen."
        )
    return ExitCode.OK if as_designed else ExitCode.FAILED


def _not_processed(record: RecordedRequest) -> bool:
    """Whether a create was answered 429 (a client may send it again)."""
    fault = record.fault
    return record.rate_limited or (
        fault is not None
        and fault.action == "respond"
        and fault.status_code == 429
        and not fault.process
    )


class _Books:
    """What the fake provider received and created, against the outcomes."""

    def __init__(self) -> None:
        self.struck = 0  # requests a fault struck
        self.duplicates = 0  # creates sent again after one that may have been processed
        self.unseen = 0  # tasks created whose input is reported as possibly created
        self.lost = 0  # tasks created that no outcome accounts for

    @classmethod
    def check(cls, server: FakeBananaServer, outcome_of: dict[str, Outcome]) -> _Books:
        books = cls()
        books.struck = sum(1 for r in server.requests if r.fault is not None)
        sent: collections.Counter[str] = collections.Counter()
        for record in server.requests:
            if record.kind != "create" or not isinstance(record.json, dict):
                continue
            prompt = str(record.json.get("prompt"))
            books.duplicates += 1 if sent[prompt] else 0
            sent[prompt] += 0 if _not_processed(record) else 1
        for task_id, task in server.tasks.items():
            outcome = outcome_of.get(str(task.body.get("prompt")))
            if outcome is not None and outcome.task is not None and outcome.task.id == task_id:
                continue  # completed, or failed as scripted: accounted for
            error = outcome.error if outcome is not None else None
            if isinstance(error, APIConnectionError) and error.request_sent:
                books.unseen += 1  # its outcome says the create may have happened
            else:
                books.lost += 1
        return books


def _fault_summary(
    args: argparse.Namespace,
    stats: Stats,
    out: Path,
    *,
    profile: str,
    seed: int,
    broken: collections.Counter[str],
    books: _Books,
    scripted: tuple[int, int],
) -> ExitCode:
    """The books of a demo through a fault profile, one fact a line.

    ``scripted`` is how many prompts are scripted to fail, and of those how
    many had their create broken by a fault before the provider could
    refuse them: those end as broken creates, not as scripted failures,
    which is why the two counts need not add up to the prompts scripted.
    """
    by_fault = sum(broken.values())
    unexpected = stats.failed - stats.expected_failures
    as_scripted = stats.expected_failures - by_fault
    as_designed = unexpected == 0 and books.lost == 0 and books.duplicates == 0
    if args.json or (args.quiet and as_designed):
        return ExitCode.OK if as_designed else ExitCode.FAILED
    verdict = "finished as designed" if as_designed else "did NOT go as designed"
    lines = [
        f"demo {verdict} through the {profile!r} fault profile (seed {seed}); "
        f"the faults struck {_plural(books.struck, 'request')}:",
        f"  {_plural(stats.ok, 'image')} saved in {out}/",
    ]
    scripted_count, scripted_broken = scripted
    if scripted_count:
        line = (
            f"  {as_scripted} failed as scripted, of the "
            f"{_plural(scripted_count, 'input')} scripted to fail"
        )
        if scripted_broken:
            line += (
                f"; a fault broke the create of {scripted_broken} of them before "
                "the provider could refuse it (counted with the broken creates below)"
            )
        lines.append(line)
    if by_fault:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(broken.items()))
        line = (
            f"  {_plural(by_fault, 'create')} broken by injected faults ({kinds}), "
            "shown as expected failures"
        )
        if books.unseen:
            line += (
                f"; {books.unseen} of them made a task all the same (the provider "
                "processed the create, its answer was lost), and "
                f"{'its outcome says' if books.unseen == 1 else 'their outcomes say'} "
                "the create may have happened"
            )
        lines.append(line)
    else:
        lines.append("  no create broken by the faults")
    lines.append(
        f"  creates sent twice: {books.duplicates}, tasks lost: {books.lost}, "
        f"unexpected failures: {unexpected}; in {duration(stats.elapsed())}"
    )
    for line in lines:
        to_stdout(line)
    return ExitCode.OK if as_designed else ExitCode.FAILED
