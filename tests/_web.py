"""Shared by the web helper tests: load an example app, wait for the fake's creates."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

from banana_async.testing import FakeBananaServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` afresh, as ``python examples/<name>.py`` would find it."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def creates_reach(server: FakeBananaServer, count: int) -> None:
    """Return once ``server`` has received ``count`` creates (the requests are in flight)."""
    while server.count("create") < count:  # noqa: ASYNC110 - the server has no event
        await asyncio.sleep(0.01)
