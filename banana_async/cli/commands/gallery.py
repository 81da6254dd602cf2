"""``banana-async gallery DIR``: a page of a batch's images, written from its manifest."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from banana_async.cli.common import RunState
from banana_async.cli.exit_codes import ExitCode
from banana_async.cli.gallery import warn_damaged, write_gallery
from banana_async.cli.output import json_line, to_stdout

__all__ = ["run"]


async def run(args: argparse.Namespace, state: RunState) -> ExitCode:
    """Write ``DIR/index.html`` and print its path; needs no key, sends nothing.

    Raises:
        InvalidRequestError: DIR or its manifest is missing (exit 2).
        OSError: the manifest cannot be read or the page written (exit 1).
    """
    gallery = await asyncio.to_thread(write_gallery, Path(args.out_dir))
    warn_damaged(gallery)
    counts = gallery.counts()
    if args.json:
        to_stdout(json_line(gallery.record()))
    elif args.quiet:
        to_stdout(str(gallery.path))
    else:
        shown = ", ".join(f"{name}: {count}" for name, count in counts.items() if count)
        if gallery.runs > 1:
            # The manifest keeps every run: say that the page does too.
            shown += f"; {gallery.runs} runs, {gallery.run_images} of the images from the latest"
        to_stdout(f"gallery: {gallery.path} ({shown or 'empty'}); open it in a browser")
    return ExitCode.OK
