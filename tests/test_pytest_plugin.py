"""The pytest plugin, run for real: pytest in a temporary directory (``pytester``).

The inner runs load the plugin the way a user's pytest does, through the
``pytest11`` entry point, and their tests talk HTTP on loopback to the
``banana_server`` fixture.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "testing.md"

# What a careful user sets: warnings are errors, so an unclosed session or a
# never-retrieved task exception fails the inner run.
INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

# Two tests in a row: the second checks that the first one's server and
# client were closed at teardown, and that it got fresh ones.
LIFECYCLE = """
import aiohttp
import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, FakeClock, Fault, TaskScript

SEEN = []


{mark}
async def test_generate_over_http(
    banana_client: ba.BananaClient,
    banana_server: FakeBananaServer,
    banana_clock: FakeClock,
    banana_api_key: str,
) -> None:
    banana_server.inject(Fault.status(429, headers={{"Retry-After": "3"}}), on="create")
    banana_server.plan(TaskScript(duration=20.0))
    task = await banana_client.generate("a cat")
    assert task.ok
    assert task.image_url == banana_server.image_url(task.id)
    assert banana_server.url.startswith("http://127.0.0.1:")
    assert banana_server.count("create") == 2
    assert banana_server.requests[-1].authorization == f"Bearer {{banana_api_key}}"
    assert banana_clock.sleeps[0] == 3.0  # server and client share the clock
    SEEN.append((banana_server, banana_client))


{mark}
async def test_each_test_gets_a_new_server_and_client(
    banana_client: ba.BananaClient, banana_server: FakeBananaServer
) -> None:
    (old_server, old_client), = SEEN
    assert old_client.closed
    assert banana_server is not old_server and banana_server.requests == []
    seen_before = len(old_server.requests)
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"{{old_server.url}}/v1/result/x") as response:
                await response.read()  # its port may serve a new server by now
        except aiohttp.ClientConnectionError:
            pass  # nothing listens there any more
    assert len(old_server.requests) == seen_before
    task = await banana_client.generate("a dog")
    assert task.ok
"""


def _ini(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makefile(".ini", pytest=INI.format(mode=mode))


@pytest.mark.parametrize(
    ("mode", "mark"), [("auto", ""), ("strict", "@pytest.mark.asyncio")], ids=["auto", "strict"]
)
def test_the_fixtures_serve_real_http_and_are_closed_after_each_test(
    pytester: pytest.Pytester, mode: str, mark: str
) -> None:
    # Strict mode hands pytest-asyncio only the fixtures it marked itself: a
    # plain async fixture would reach the test as an async generator there.
    _ini(pytester, mode)
    pytester.makepyfile(test_lifecycle=LIFECYCLE.format(mark=mark))
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_the_plugin_is_loaded_through_its_entry_point(pytester: pytest.Pytester) -> None:
    # A separate process, with no conftest and no -p: only the entry point
    # can have loaded the plugin there.
    _ini(pytester, "auto")
    result = pytester.runpytest_subprocess("--fixtures")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*fixtures defined from banana_async.testing.pytest_plugin*"])
    for name in ("banana_server", "banana_client", "banana_clock", "banana_api_key"):
        result.stdout.fnmatch_lines([f"{name} -- *"])
    disabled = pytester.runpytest_subprocess("--fixtures", "-p", "no:banana_async")
    assert "banana_server" not in disabled.stdout.str()


def test_without_pytest_asyncio_only_the_async_fixtures_fail(pytester: pytest.Pytester) -> None:
    # pytest-asyncio is installed here: the inner process hides its module
    # from imports and keeps pytest from loading its plugin.
    pytester.makepyfile(
        """
        from banana_async.testing import FakeClock


        def test_other_tests_run(banana_clock: FakeClock, banana_api_key: str) -> None:
            assert banana_clock.sleeps == []
            assert banana_api_key


        def test_the_server_fixture_says_what_is_missing(banana_server: object) -> None:
            raise AssertionError("not reached")
        """
    )
    pytester.makepyfile(
        run_without_pytest_asyncio="""
        import sys

        import pytest


        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "pytest_asyncio":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None


        sys.meta_path.insert(0, Hide())
        # --assert=plain: pytest's import hook would find the module itself.
        args = ["-p", "no:asyncio", "--assert=plain", "-p", "no:cacheprovider", "-rE"]
        sys.exit(pytest.main(args))
        """
    )
    result = pytester.run(sys.executable, "run_without_pytest_asyncio.py")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*the banana_server fixture (from banana_async's pytest plugin) needs pytest-asyncio*"]
    )


async def test_the_plugin_fixtures_live_beside_this_projects_own(
    server: FakeBananaServer,
    client: ba.BananaClient,
    banana_server: FakeBananaServer,
    banana_client: ba.BananaClient,
) -> None:
    # tests/conftest.py has server, client and clock fixtures of its own: the
    # plugin, loaded here too, neither replaces them nor is replaced by them.
    assert banana_server is not server
    await client.create("a cat")
    await banana_client.create("a dog")
    assert [r.json["prompt"] for r in server.requests] == ["a cat"]
    assert [r.json["prompt"] for r in banana_server.requests] == ["a dog"]
    assert banana_client.query_base_url.startswith(banana_server.url)


def _doc_files() -> dict[str, str]:
    """The files of docs/testing.md's "pytest plugin" section, by the name on their first line."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## The pytest plugin\n", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"^```python\n(.*?)^```", section, re.DOTALL | re.MULTILINE):
        first, _, body = block.partition("\n")
        assert first.startswith("# "), first
        files[first.removeprefix("# ")] = textwrap.dedent(body)
    return files


def test_the_documented_examples_pass(pytester: pytest.Pytester) -> None:
    files = _doc_files()
    assert set(files) == {"test_images.py", "conftest.py", "test_navo.py"}
    _ini(pytester, "auto")
    for name, code in files.items():
        pytester.path.joinpath(name).write_text(code, encoding="utf-8")
    pytester.runpytest().assert_outcomes(passed=3)


REAL_TIME_BATCH = """
import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, RequestBudget, TaskScript


@pytest.fixture
def banana_clock() -> None:
    return None  # real time: a batch has many sleepers at once


async def test_a_batch_on_real_time(
    banana_client: ba.BananaClient, banana_server: FakeBananaServer
) -> None:
    banana_server.script_for = lambda body: TaskScript(duration=0.3)
    banana_server.budget = RequestBudget(rate=50.0, burst=5.0)
    prompts = [f"prompt {i}" for i in range(40)]
    batch = banana_client.generate_many(prompts, concurrency=40, poll_interval=0.1)
    outcomes = [o async for o in batch]
    assert len(outcomes) == 40
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
"""


def test_a_none_clock_puts_both_fixtures_on_real_time(pytester: pytest.Pytester) -> None:
    _ini(pytester, "auto")
    pytester.makepyfile(test_batch=REAL_TIME_BATCH)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)
