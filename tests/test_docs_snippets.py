"""Every Python block in the README and the docs runs, against the fake provider.

The convention (also in ``docs/contributing.md``):

- The blocks of one page run in order, in one namespace, like the cells of a
  notebook, in a fresh folder that holds a ``prompts.txt`` of three prompts.
  ``await`` and ``async with`` work at the top level.
- Before each block, ``ba`` (the package), ``client`` (an open
  :class:`~banana_async.BananaClient`), ``prompts`` (a list of three prompts)
  and ``task`` (a completed task) are set, so that a fragment reads like
  user code.
- ``BANANA_API_KEY`` is set, and every ``BananaClient`` made without a base
  URL talks to a :class:`~banana_async.testing.FakeBananaServer` on a virtual
  clock: tasks take seconds of that clock and no real time.
- A page whose blocks name the database ``postgresql://batcher@db.internal/jobs``
  runs them against a Postgres cluster the test starts for that page
  (``tests/_postgres.py``; skipped without Postgres, an error under CI).
- A block that cannot run opens with ```` ```python notest ```` and the text
  around it says why; there are few. A block that needs an optional package
  which is not installed is skipped (and says which).
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import functools
import inspect
import re
import symtable
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, FakeClock

from ._postgres import cluster

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fence opens with ```python, then maybe words ("notest"), on its own line.
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
NOT_RUN = "notest"
KEY = "sk-docs-0123456789"
PROMPTS = ["a red fox in the snow", "a blue whale, watercolour", "a green parrot"]
# Packages a block may need that the test environment need not have.
# The database the docs' examples name; a real one takes its place (see above).
POSTGRES = "postgresql://batcher@db.internal/jobs"
OPTIONAL = frozenset({"fastapi", "pydantic", "uvicorn", "starlette", "redis", "django", "flask"})
T = TypeVar("T")


@attrs.frozen
class Block:
    """One fenced Python block: where it is, its code, and whether it runs."""

    where: str
    code: str
    runs: bool


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 2
        words = match.group(1).split()
        found.append(
            Block(f"{path.relative_to(ROOT)}:{line}", match.group(2), NOT_RUN not in words)
        )
    return found


ALL = [block for path in FILES for block in blocks_of(path)]
PAGES = [path for path in FILES if blocks_of(path)]


def test_the_docs_have_python_blocks_and_few_are_not_run() -> None:
    assert len(ALL) >= 20
    not_run = [block.where for block in ALL if not block.runs]
    assert len(not_run) <= max(3, len(ALL) // 10), not_run


@pytest.mark.parametrize("block", ALL, ids=[block.where for block in ALL])
def test_block_compiles(block: Block) -> None:
    compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


class ServerThread:
    """A FakeBananaServer on its own event loop in a thread.

    Blocks call ``asyncio.run()``, which takes the test's thread: the server
    must answer from another one.
    """

    def __init__(self, server: FakeBananaServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=60)
        self.loop.close()


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeBananaServer, FakeClock]]:
    """The fake provider every client without a base URL is pointed at."""
    clock = FakeClock()
    with ServerThread(FakeBananaServer(api_key=KEY, duration=3.0, clock=clock.time)) as thread:
        monkeypatch.setenv("BANANA_API_KEY", KEY)
        original = ba.BananaClient.__init__

        @functools.wraps(original)
        def pointed(self: ba.BananaClient, *args: Any, **kwargs: Any) -> None:
            urls = ("base_url", "create_base_url", "query_base_url")
            if not any(kwargs.get(name) for name in urls):
                # Only a client aimed at our server gets our clock: one with a
                # server of its own (a block may start one) keeps real time.
                kwargs["base_url"] = thread.server.url
                kwargs.setdefault("clock", clock)
            original(self, *args, **kwargs)

        monkeypatch.setattr(ba.BananaClient, "__init__", pointed)
        yield thread.server, clock


def _missing_optional(exc: ModuleNotFoundError) -> str | None:
    name = (exc.name or "").partition(".")[0]
    return name if name in OPTIONAL else None


async def _run_async(code: Any, namespace: dict[str, Any]) -> None:
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        await result


def _run(loop: asyncio.AbstractEventLoop, block: Block, namespace: dict[str, Any]) -> None:
    code = compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & 0x80:  # CO_COROUTINE: the block awaits at the top level
        loop.run_until_complete(_run_async(code, namespace))
    else:
        # No loop runs in this thread now: a block may call asyncio.run().
        exec(code, namespace)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_runs(
    page: Path,
    provider: tuple[FakeBananaServer, FakeClock],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "prompts.txt").write_text("".join(f"{p}\n" for p in PROMPTS), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    blocks = [block for block in blocks_of(page) if block.runs]
    with contextlib.ExitStack() as stack:
        if any(POSTGRES in block.code for block in blocks):
            database = stack.enter_context(cluster()).url
            blocks = [
                attrs.evolve(block, code=block.code.replace(POSTGRES, database)) for block in blocks
            ]
        _run_page(blocks)


def _run_page(blocks: list[Block]) -> None:
    loop = asyncio.new_event_loop()
    client = ba.BananaClient()
    try:
        loop.run_until_complete(client.__aenter__())
        task = loop.run_until_complete(client.generate(PROMPTS[0]))
        namespace: dict[str, Any] = {"__name__": "docs_block"}
        skipped = []
        for block in blocks:
            namespace.update(ba=ba, client=client, prompts=list(PROMPTS), task=task)
            try:
                _run(loop, block, namespace)
            except ModuleNotFoundError as exc:
                missing = _missing_optional(exc)
                if missing is None:
                    raise
                skipped.append(f"{block.where} (needs {missing})")
            except BaseException as exc:
                exc.add_note(f"in the block at {block.where}")
                raise
    finally:
        loop.run_until_complete(client.__aexit__(None, None, None))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if skipped:
        pytest.skip("not installed: " + ", ".join(skipped))


def test_a_broken_block_fails_its_page(
    provider: tuple[FakeBananaServer, FakeClock], tmp_path: Path
) -> None:
    broken = Block("broken.md:1", "task = await client.get('no-such-task')\n", True)
    loop = asyncio.new_event_loop()
    client = ba.BananaClient()
    try:
        loop.run_until_complete(client.__aenter__())
        with pytest.raises(ba.NotFoundError):
            _run(loop, broken, {"client": client})
    finally:
        loop.run_until_complete(client.__aexit__(None, None, None))
        loop.close()


# Sections whose blocks are meant to be copied one at a time: each one must
# run alone, without the page's earlier blocks or the names set above.
SELF_CONTAINED = [("docs/testing.md", "Fault profiles")]


def section_blocks(page: str, heading: str) -> list[Block]:
    """The runnable blocks under ``## heading`` of ``page``, up to the next ``## ``."""
    path = ROOT / page
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    first = text.count("\n", 0, start)
    last = text.count("\n", 0, end) if end != -1 else len(text.splitlines())
    found = [
        block
        for block in blocks_of(path)
        if block.runs and first < int(block.where.rpartition(":")[2]) <= last
    ]
    assert found, f"no Python block under '## {heading}' in {page}"
    return found


def undefined_names(code: str) -> set[str]:
    """The names a block reads that it neither defines nor imports (nor are builtins)."""
    module = symtable.symtable(code, "<block>", "exec")
    defined = {
        symbol.get_name()
        for symbol in module.get_symbols()
        if symbol.is_assigned() or symbol.is_imported()
    }
    missing = set()
    tables = [module]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for symbol in table.get_symbols():
            if not symbol.is_referenced():
                continue
            outer = table is module or symbol.is_global()
            name = symbol.get_name()
            if outer and name not in defined and not hasattr(builtins, name):
                missing.add(name)
    return missing


SECTION_BLOCKS = [
    block for page, heading in SELF_CONTAINED for block in section_blocks(page, heading)
]


def test_the_undefined_names_check_finds_them() -> None:
    code = "import pytest\n\nasync def test_x(client: ba.BananaClient) -> None:\n    use(KEY)\n"
    assert undefined_names(code) == {"ba", "KEY", "use"}


@pytest.mark.parametrize("block", SECTION_BLOCKS, ids=[block.where for block in SECTION_BLOCKS])
def test_block_runs_alone(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert undefined_names(block.code) == set(), "copied alone, this block fails"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "docs_block"}
    exec(compile(block.code, block.where, "exec"), namespace)
    # A test the block defines that needs no fixture runs too, as pytest would run it.
    tests = [
        value
        for name, value in namespace.items()
        if name.startswith("test_") and inspect.iscoroutinefunction(value)
    ]
    for test in tests:
        if not inspect.signature(test).parameters:
            asyncio.run(test())
