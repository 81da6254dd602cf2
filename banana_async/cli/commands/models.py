"""``banana-async models``: the model names the dialect accepts, with their resolutions."""

from __future__ import annotations

import argparse

from banana_async.cli.common import RunState
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.output import json_line, to_stdout
from banana_async.dialects import get_dialect
from banana_async.models import Resolution

__all__ = ["run"]


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Print one model per line (``--json``: one object per line); needs no key."""
    dialect = get_dialect(args.dialect)
    every = [r.value for r in Resolution]
    for model in sorted(dialect.models):
        honoured = dialect.resolutions.get(model)
        resolutions = every if honoured is None else [r.value for r in Resolution if r in honoured]
        if args.json:
            to_stdout(
                json_line({"dialect": dialect.name, "model": model, "resolutions": resolutions})
            )
        elif args.quiet:
            to_stdout(model)
        else:
            to_stdout(f"{model:<24} resolutions: {', '.join(resolutions)}")
    return ExitCode.OK
