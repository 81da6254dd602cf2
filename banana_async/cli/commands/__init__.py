"""One module per command, each imported only when its command runs.

So ``banana-async status`` never loads what only the demo needs (the fake
provider and ``aiohttp.web``). A command module defines ``run(args, state)``,
a coroutine function that returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeAlias

if TYPE_CHECKING:
    from banana_async.cli.common import RunState

__all__ = ["COMMANDS", "Command", "load"]

Command: TypeAlias = Callable[[argparse.Namespace, "RunState"], Coroutine[Any, Any, int]]
"""A command: runs with the parsed options and the run's state, returns the exit code."""

COMMANDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "generate": "banana_async.cli.commands.generate",
        "batch": "banana_async.cli.commands.batch",
        "status": "banana_async.cli.commands.status",
        "download": "banana_async.cli.commands.download",
        "journal": "banana_async.cli.commands.journal",
        "models": "banana_async.cli.commands.models",
        "gallery": "banana_async.cli.commands.gallery",
        "demo": "banana_async.cli.commands.demo",
    }
)
"""Each command's name -> the module that runs it."""


def load(name: str) -> Command:
    """Import the module of command ``name`` and return its ``run``.

    Raises:
        KeyError: no such command.
    """
    module = importlib.import_module(COMMANDS[name])
    command: Command = module.run
    return command
