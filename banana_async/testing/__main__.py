"""Serve a :class:`~banana_async.testing.FakeBananaServer` until Ctrl-C.

``python -m banana_async.testing --port 8500`` gives the example applications
(and any code of yours) a provider to talk to without a key or a network::

    BANANA_BASE_URL=http://127.0.0.1:8500 BANANA_API_KEY=fake python examples/fastapi_app.py

It accepts any API key unless ``--api-key`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from banana_async.testing._server import FakeBananaServer


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
    return parser


async def _serve(args: argparse.Namespace) -> None:
    async with FakeBananaServer(
        api_key=args.api_key, duration=args.duration, host=args.host, port=args.port
    ) as server:
        print(f"fake provider listening on {server.url} (Ctrl-C stops it)", flush=True)
        await asyncio.Event().wait()  # until Ctrl-C cancels it


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and serve until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args))
    except OSError as exc:  # the port is taken, or the host is not this machine's
        parser.exit(1, f"{parser.prog}: cannot listen on {args.host}:{args.port}: {exc.strerror}\n")


if __name__ == "__main__":
    main()
