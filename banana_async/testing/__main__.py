"""Serve a :class:`~banana_async.testing.FakeBananaServer` until Ctrl-C.

``python -m banana_async.testing --port 8500`` gives the example applications
(and any code of yours) a provider to talk to without a key or a network::

    BANANA_BASE_URL=http://127.0.0.1:8500 BANANA_API_KEY=fake python examples/fastapi_app.py

It accepts any API key unless ``--api-key`` names one. ``--rate-limit R``
answers ``429`` past R requests a second per key, as
``FakeBananaServer(budget=RequestBudget(rate=R, burst=B))`` does (``--burst B``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from banana_async._checks import positive_number
from banana_async.testing._budget import RequestBudget
from banana_async.testing._server import FakeBananaServer


def _rate(text: str) -> float:
    """``--rate-limit``: a finite number of requests a second above zero."""
    value = positive_number(text)
    if isinstance(value, str):
        raise argparse.ArgumentTypeError(value)
    return value


def _burst(text: str) -> float:
    """``--burst``: a finite number of requests of at least one (below one, none would pass)."""
    value = _rate(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m banana_async.testing",
        description="Serve a fake Nano Banana provider (both dialects) on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8500, help="port (0: any free one)")
    parser.add_argument(
        "--duration",
        type=float,
        default=3.0,
        help="seconds a task takes to complete (default: 3)",
    )
    parser.add_argument("--api-key", help="the only key accepted (default: any)")
    parser.add_argument(
        "--rate-limit",
        type=_rate,
        metavar="R",
        help="answer 429 (with Retry-After) past R creates and status queries a second "
        "per API key, as a provider's rate limit does (default: no limit)",
    )
    parser.add_argument(
        "--burst",
        type=_burst,
        metavar="B",
        help="with --rate-limit: the most requests let through at once after a quiet "
        "spell (default: R, at least 1)",
    )
    return parser


def _budget(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RequestBudget | None:
    """The budget the options ask for; a usage error for --burst alone."""
    if args.rate_limit is None:
        if args.burst is not None:
            parser.error("--burst needs --rate-limit")
        return None
    return RequestBudget(rate=args.rate_limit, burst=args.burst)


async def _serve(args: argparse.Namespace, budget: RequestBudget | None) -> None:
    async with FakeBananaServer(
        api_key=args.api_key,
        duration=args.duration,
        host=args.host,
        port=args.port,
        budget=budget,
    ) as server:
        limit = (
            ""
            if budget is None
            else f", {budget.rate:g} requests a second per key, bursts of {budget.capacity:g}"
        )
        print(f"fake provider listening on {server.url}{limit} (Ctrl-C stops it)", flush=True)
        await asyncio.Event().wait()  # until Ctrl-C cancels it


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and serve until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    budget = _budget(parser, args)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args, budget))
    except OSError as exc:  # the port is taken, or the host is not this machine's
        parser.exit(1, f"{parser.prog}: cannot listen on {args.host}:{args.port}: {exc.strerror}\n")


if __name__ == "__main__":
    main()
