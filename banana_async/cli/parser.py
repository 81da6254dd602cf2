"""The argument parser of ``banana-async``: every command's options, nothing run.

The parser names all the commands, so that ``--help`` lists them, but it
imports none of their modules: a command's code is loaded only when it runs
(see :mod:`banana_async.cli.commands`).
"""

from __future__ import annotations

import argparse
import os
from typing import Final

from banana_async._checks import positive_number
from banana_async._version import __version__
from banana_async.client import API_KEY_ENV, RATE_LIMIT_URL_ENV
from banana_async.models import AspectRatio, Resolution

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_CONCURRENCY",
    "DEMO_COUNT",
    "DEMO_OUT",
    "DEMO_POLL_INTERVAL",
    "DIALECT_ENV",
    "build_parser",
    "positive_float",
    "positive_int",
]

DIALECT_ENV: Final = "BANANA_DIALECT"
"""Environment variable with the default of ``--dialect``."""

BASE_URL_ENV: Final = "BANANA_BASE_URL"
"""Environment variable with the default of ``--base-url``."""

DEFAULT_CONCURRENCY: Final = 50
"""The default of ``batch --concurrency``."""

FAULT_PROFILE_NAMES: Final = ("flaky", "overloaded", "hostile")
"""The choices of ``demo --faults`` (banana_async.testing.FAULT_PROFILES; not
imported from there: the parser must not load the fake server)."""
DEMO_OUT: Final = "banana-demo-out"
"""The default of ``demo --out``."""

DEMO_COUNT: Final = 20
"""The default of ``demo --count``."""

DEMO_POLL_INTERVAL: Final = 0.2
"""The default of ``demo --poll-interval``: the fake provider is fast."""


def positive_float(text: str) -> float:
    """An option's value as a finite number above zero (an argparse ``type``).

    Raises:
        argparse.ArgumentTypeError: not a number, not finite, or not above zero.
    """
    value = positive_number(text)
    if isinstance(value, str):
        raise argparse.ArgumentTypeError(value)
    return value


def positive_int(text: str) -> int:
    """An option's value as a whole number of at least 1 (an argparse ``type``).

    Raises:
        argparse.ArgumentTypeError: not a whole number, or below 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def _add_global_options(
    parser: argparse.ArgumentParser, *, top: bool, base_url: bool = True
) -> None:
    """Options accepted before the command and, for convenience, after it too.

    On the subcommands the defaults are suppressed, so that an option given
    before the command is not overwritten by the subcommand's default.
    ``base_url=False`` leaves out ``--base-url``, for a command that never uses it.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--dialect",
        type=str.lower,
        choices=("nano", "navo"),
        default=default(os.environ.get(DIALECT_ENV) or "nano"),
        help=f"API dialect (default: ${DIALECT_ENV} or nano)",
    )
    if base_url:
        parser.add_argument(
            "--base-url",
            metavar="URL",
            default=default(os.environ.get(BASE_URL_ENV) or None),
            help=f"one base URL for creates and queries (default: ${BASE_URL_ENV}, "
            "else the dialect's own hosts)",
        )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output: one JSON object per line on stdout, no progress",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress, no summary; print failures and errors only",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log what the client does to stderr (-v: INFO, -vv: DEBUG; default: $BANANA_LOG)",
    )


def _shared_budget_options() -> argparse.ArgumentParser:
    """``--rate-limit-url`` and ``--allow-unshared``, for every command that calls the API.

    A one-off command (``status``, ``download``, ``generate``) spends the
    same key's budget as a batch, so it shares it too; and it takes
    ``--allow-unshared``, or a Redis outage would stop even a status query.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--rate-limit-url",
        metavar="URL",
        help="share one request budget, 429 pause and learned limit with every "
        "process using this API key through this Redis (redis://host:6379/0; "
        f"default: ${RATE_LIMIT_URL_ENV}, which also keeps a password out of ps; "
        "needs the redis extra)",
    )
    options.add_argument(
        "--allow-unshared",
        action="store_true",
        help="if that Redis cannot be reached at the start, run on this process's own "
        "budget (a warning) instead of stopping with exit code 2",
    )
    return options


def _request_options(*, poll_default: float | None) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("generation options")
    group.add_argument("--model", help="model name (default: nano-banana-2)")
    group.add_argument(
        "--size",
        choices=[r.value for r in AspectRatio],
        metavar="RATIO",
        help="aspect ratio: " + ", ".join(r.value for r in AspectRatio),
    )
    group.add_argument(
        "--resolution",
        type=str.lower,
        choices=[r.value for r in Resolution],
        help="output resolution (only some models honour it)",
    )
    group.add_argument(
        "--image-url",
        dest="image_urls",
        action="append",
        metavar="URL",
        help="reference image URL; repeat the option for several",
    )
    group.add_argument(
        "--allow-unknown-models",
        action="store_true",
        help="send a model name the dialect does not list",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="how long to wait for each task (default: 900)",
    )
    group.add_argument(
        "--poll-interval",
        type=positive_float,
        default=poll_default,
        metavar="SECONDS",
        help="minimum seconds between status queries of a task (default: "
        + ("2, as the providers ask)" if poll_default is None else f"{poll_default:g})"),
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``banana-async`` (reads the environment for defaults)."""
    parser = argparse.ArgumentParser(
        prog="banana-async",
        description="Generate images with the Nano Banana task API.",
        epilog=(
            f"The API key is read from ${API_KEY_ENV} (never from an option). "
            "Exit codes: 0 all done, 1 some generation failed, 2 usage error, "
            "3 journal unusable or failed, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM. "
            "Try `banana-async demo`: it needs no key and no network."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, top=False)
    request = _request_options(poll_default=None)
    shared = _shared_budget_options()
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate",
        parents=[common, request, shared],
        help="generate one image and download it",
        description="Create one task, wait for it, download its image.",
    )
    generate.add_argument("prompt", help="what to draw")
    generate.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help="folder for the image, created if missing (default: .)",
    )

    batch = commands.add_parser(
        "batch",
        parents=[common, request, shared],
        help="generate an image for every line of a file",
        description=(
            "Generate an image for each prompt in FILE: one prompt per line (blank "
            "lines and lines starting with # are skipped), or JSON Lines (objects "
            "with prompt, model, resolution, size, image_urls) when the file ends "
            "in .jsonl or every line is an object. The generation options are "
            "defaults for what a line does not say."
        ),
    )
    batch.add_argument("file", metavar="FILE", help="the prompts; - reads standard input")
    batch.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the images and manifest.jsonl (created if missing)",
    )
    batch.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"most tasks in flight at once (default: {DEFAULT_CONCURRENCY})",
    )
    batch.add_argument(
        "--journal",
        metavar="PATH",
        help="SQLite journal: run the same command again to resume without creating any task "
        "twice; or a postgresql:// URL, with --batch, to run one batch with any number of "
        "processes on any machines (each given the same FILE)",
    )
    batch.add_argument(
        "--batch",
        metavar="NAME",
        help="with a postgresql:// --journal: the batch's name, the same for every worker",
    )
    batch.add_argument(
        "--lease",
        metavar="SECONDS",
        type=positive_float,
        help=(
            "with a postgresql:// --journal: how long this worker's claims outlive it if it "
            "dies, and the longest database outage it rides out (default 30)"
        ),
    )
    batch.add_argument(
        "--resend-unconfirmed",
        action="store_true",
        help="with --journal: create again the inputs whose create was in flight "
        "when an earlier run stopped (they may be billed twice)",
    )
    batch.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --journal: create again the inputs whose task failed in an "
        "earlier run (a new task each, billed anew)",
    )
    batch.add_argument(
        "--requests-per-second",
        type=positive_float,
        metavar="R",
        help="hard cap on all requests to the API, in requests per second "
        "(the provider's limit is learned anyway)",
    )
    batch.add_argument(
        "--format",
        choices=("auto", "text", "jsonl"),
        default="auto",
        help="how FILE is read (default: auto)",
    )
    batch.add_argument(
        "--gallery",
        action="store_true",
        help="at the end, write DIR/index.html: a page of the images with their prompts "
        "(the same as `banana-async gallery DIR`)",
    )

    status = commands.add_parser(
        "status", parents=[common, shared], help="query a task's status once", description=None
    )
    status.add_argument("task_id", metavar="ID", help="the task id")

    download = commands.add_parser(
        "download",
        parents=[common, shared],
        help="save the images of finished tasks",
        description=(
            "Save the image of each task that has completed, for example one a "
            "timed-out or interrupted run left behind. Image URLs expire after "
            "about a day."
        ),
    )
    download.add_argument("task_ids", metavar="ID", nargs="+", help="task ids")
    download.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the images (created if missing)",
    )

    # Commands that never reach the API take no --base-url they would ignore.
    local = argparse.ArgumentParser(add_help=False)
    _add_global_options(local, top=False, base_url=False)
    commands.add_parser(
        "models",
        parents=[local],
        help="list the models the dialect accepts",
        description=(
            "List the model names the dialect documents, with the resolutions each "
            "honours. Other names are refused unless --allow-unknown-models is given."
        ),
    )

    journal = commands.add_parser(
        "journal",
        parents=[local],
        help="show every input of a journaled batch",
        description=(
            "Read a batch's journal (a SQLite file, or a postgresql:// URL with --batch) and "
            "print every input recorded in it, whichever worker ran it, then the count "
            "in each state. Sends nothing to the API."
        ),
    )
    journal.add_argument("journal", metavar="JOURNAL", help="a journal file or postgresql:// URL")
    journal.add_argument(
        "--batch", metavar="NAME", help="the batch's name (a postgresql:// journal only)"
    )

    gallery = commands.add_parser(
        "gallery",
        parents=[local],
        help="write a page of a batch's images (index.html)",
        description=(
            "Write DIR/index.html from DIR/manifest.jsonl: the images with their prompts, "
            "model, size, task id and time taken, the inputs that failed with their "
            "errors, and a filter over the prompts. One static file: open it from disk, "
            "or copy the folder anywhere. Sends nothing to the API."
        ),
    )
    gallery.add_argument(
        "out_dir", metavar="DIR", help="the --out folder of a batch or demo (has manifest.jsonl)"
    )

    demo = commands.add_parser(
        "demo",
        parents=[local, _request_options(poll_default=DEMO_POLL_INTERVAL)],
        help="run a batch against a built-in fake provider (no key, no network)",
        description=(
            "Start a fake provider on this machine and generate a batch of example "
            "images with it; two prompts are scripted to fail, to show how failures "
            "are reported. Needs no API key and no network."
        ),
    )
    demo.add_argument(
        "--out",
        default=DEMO_OUT,
        metavar="DIR",
        help=f"directory for the images (default: {DEMO_OUT})",
    )
    demo.add_argument(
        "--count",
        type=positive_int,
        default=DEMO_COUNT,
        metavar="N",
        help=f"how many images (default: {DEMO_COUNT})",
    )
    demo.add_argument(
        "--faults",
        choices=FAULT_PROFILE_NAMES,
        metavar="PROFILE",
        help=(
            "make the fake provider misbehave with a seeded fault profile: "
            f"{', '.join(FAULT_PROFILE_NAMES)} (see the testing docs); creates it "
            "breaks are reported, and the books are checked at the end"
        ),
    )
    demo.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="the fault profile's seed, to repeat a run (default: a random one, printed)",
    )
    return parser
