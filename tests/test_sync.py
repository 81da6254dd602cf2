"""``SyncBananaClient``: the blocking client, against a fake provider in another thread.

The provider runs on an event loop of its own in a thread of the test
process (or the client in a child process), so that the client under test
can block the test's thread, or run inside a test's running event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, assert_type

import pytest

import banana_async as ba
from banana_async.sync import OutcomeIterator, SyncBananaClient
from banana_async.testing import FakeBananaServer, TaskScript

API_KEY = "sk-test-0123456789abcdef"
T = TypeVar("T")


class ProviderThread:
    """A FakeBananaServer on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = FakeBananaServer(api_key=API_KEY, duration=0.0)
        self.call(self.server.start)

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        async def run() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def do(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the server's loop (its state belongs to that thread)."""

        async def run() -> T:
            return function()

        return self.call(run)

    def close(self) -> None:
        self.call(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def provider() -> Iterator[ProviderThread]:
    running = ProviderThread()
    try:
        yield running
    finally:
        running.close()


def make_client(provider: ProviderThread, **options: Any) -> SyncBananaClient:
    settings: dict[str, Any] = {
        "base_url": provider.server.url,
        "poll_interval": 0.01,
        "adaptive_polling": False,
    }
    settings.update(options)
    return SyncBananaClient(API_KEY, **settings)


@pytest.fixture
def client(provider: ProviderThread) -> Iterator[SyncBananaClient]:
    with make_client(provider) as opened:
        yield opened


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("banana-async-sync-")]


def tasks_on_loop(client: SyncBananaClient) -> int:
    """Tasks on the client's loop, other than the one asking."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return client._loop_thread.run(count)


# -- the same methods, blocking ----------------------------------------------------------


def test_create_get_wait_generate_download(client: SyncBananaClient, tmp_path: Path) -> None:
    created = client.create("a cat", size="16:9")
    assert created.status is ba.TaskStatus.QUEUED
    assert client.get(created.id).id == created.id
    done = client.wait(created, timeout=60)
    assert done.ok
    generated = client.generate("a dog", model="nano-banana-2")
    assert generated.ok
    assert generated.image_url
    path = client.download(generated, tmp_path)
    assert path.parent == tmp_path
    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_navo_dialect_too(provider: ProviderThread) -> None:
    with make_client(provider, dialect="navo") as client:
        assert client.dialect.name == "navo"
        assert client.generate("a cat").ok
    assert provider.do(lambda: provider.server.requests[0].dialect) == "navo"


def test_errors_are_the_async_client_classes(
    client: SyncBananaClient, provider: ProviderThread
) -> None:
    with pytest.raises(ba.NotFoundError) as missing:
        client.get("no-such-task")
    assert missing.value.status_code == 404
    provider.do(lambda: provider.server.plan(TaskScript(outcome="fail", error="policy")))
    with pytest.raises(ba.TaskFailedError) as failed:
        client.generate("a cat")
    assert failed.value.task.error == "policy"
    with pytest.raises(ba.InvalidRequestError):
        client.create("a cat", model="no-such-model")
    provider.do(lambda: provider.server.plan(TaskScript(duration=None)))
    with pytest.raises(ba.TaskTimeoutError) as late:
        client.generate("a slow cat", timeout=0.05)
    assert late.value.task is not None


def test_a_bad_option_raises_in_the_caller_before_any_thread_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ba.API_KEY_ENV, raising=False)
    before = loop_threads()
    with pytest.raises(ba.InvalidRequestError, match="no API key"):
        SyncBananaClient()
    with pytest.raises(ba.InvalidRequestError, match="poll_interval"):
        SyncBananaClient("k", poll_interval=-1)
    assert loop_threads() == before


def test_a_session_is_refused_with_the_reason() -> None:
    with pytest.raises(ba.InvalidRequestError, match="private loop"):
        SyncBananaClient("k", session=object())  # type: ignore[arg-type]


def test_the_parameters_are_the_async_client_s() -> None:
    init = list(inspect.signature(SyncBananaClient).parameters.values())
    assert init == list(inspect.signature(ba.BananaClient).parameters.values())
    for name in ("create", "get", "wait", "generate", "download", "generate_many"):
        mine = inspect.signature(getattr(SyncBananaClient, name))
        theirs = inspect.signature(getattr(ba.BananaClient, name))
        assert mine.parameters == theirs.parameters, name
        assert getattr(SyncBananaClient, name).__doc__, name
    assert inspect.signature(SyncBananaClient.generate).return_annotation == "Task"
    assert inspect.signature(SyncBananaClient.generate_many).return_annotation == (
        "OutcomeIterator"
    )


def test_type_checkers_see_the_parameters(client: SyncBananaClient) -> None:
    # Checked by `mypy --strict tests`: an unused ignore is an error there, so
    # each ignore below proves that mypy refuses the call.
    assert_type(client.create("a cat", size="16:9"), ba.Task)
    assert_type(client.generate_many(["a"], concurrency=1), OutcomeIterator)
    with pytest.raises(TypeError):
        client.generate("a cat", colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        SyncBananaClient(API_KEY, colour="red")  # type: ignore[call-arg]


def test_repr_and_properties(client: SyncBananaClient, provider: ProviderThread) -> None:
    assert client.create_base_url == provider.server.url
    assert client.query_base_url == provider.server.url
    assert repr(client).startswith("<SyncBananaClient dialect='nano'")
    assert repr(client).endswith(" open>")
    assert API_KEY not in repr(client)
    assert not client.closed


# -- threads and running loops -----------------------------------------------------------


def test_many_threads_share_one_client(client: SyncBananaClient) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        tasks = list(pool.map(lambda i: client.generate(f"cat {i}"), range(40)))
    assert all(task.ok for task in tasks)
    assert len({task.id for task in tasks}) == 40
    # One loop thread for the client, whatever the number of callers.
    assert len(loop_threads()) == 1


def test_threads_run_their_calls_at_the_same_time(
    client: SyncBananaClient, provider: ProviderThread
) -> None:
    # Two tasks that finish only when the provider is told to: both waits
    # must be polling at once, or the second create would never be sent.
    provider.do(lambda: provider.server.plan(TaskScript(duration=None), TaskScript(duration=None)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        waits = [pool.submit(client.generate, f"cat {i}") for i in range(2)]
        while provider.do(lambda: len(provider.server.tasks)) < 2:
            time.sleep(0.01)
        for task_id in provider.do(lambda: list(provider.server.tasks)):
            provider.do(lambda task_id=task_id: provider.server.finish(task_id))  # type: ignore[misc]
        assert all(w.result().ok for w in waits)


async def test_it_works_where_an_event_loop_is_already_running(
    client: SyncBananaClient, tmp_path: Path
) -> None:
    # A notebook cell, or a sync function called from async code: the
    # calling thread's loop is running, and the call blocks it.
    asyncio.get_running_loop()
    task = client.generate("a cat")
    assert client.download(task, tmp_path).exists()
    outcomes = list(client.generate_many(["a", "b", "c"]))
    assert sorted(o.index for o in outcomes) == [0, 1, 2]


def test_it_cannot_be_called_from_its_own_loop_thread(
    client: SyncBananaClient, provider: ProviderThread
) -> None:
    async def call_back() -> str:
        try:
            client.get("x")
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "its own event loop thread" in client._loop_thread.run(call_back)
    assert provider.do(provider.server.count) == 0  # nothing was sent


# -- generate_many -----------------------------------------------------------------------


def test_generate_many_yields_one_outcome_per_input(
    client: SyncBananaClient, provider: ProviderThread, tmp_path: Path
) -> None:
    provider.do(lambda: provider.server.plan(TaskScript(), TaskScript(outcome="fail")))
    outcomes = client.generate_many(["a", "b", "c", "d"], concurrency=1, download_to=tmp_path)
    assert isinstance(outcomes, OutcomeIterator)
    seen = list(outcomes)
    assert sorted(o.index for o in seen) == [0, 1, 2, 3]
    failed = [o for o in seen if not o.ok]
    assert len(failed) == 1
    assert isinstance(failed[0].error, ba.TaskFailedError)
    assert all(o.path is not None and o.path.exists() for o in seen if o.ok)
    assert list(outcomes) == []  # exhausted stays exhausted
    assert tasks_on_loop(client) == 0


def test_generate_many_checks_its_arguments_at_once(client: SyncBananaClient) -> None:
    with pytest.raises(ba.InvalidRequestError):
        client.generate_many("one string, not a list")
    with pytest.raises(ba.InvalidRequestError):
        client.generate_many(["a"], concurrency=0)


def never_finishing(provider: ProviderThread, count: int) -> None:
    provider.do(lambda: provider.server.plan(*[TaskScript(duration=None)] * count))


def test_leaving_the_loop_early_cancels_the_batch(
    client: SyncBananaClient, provider: ProviderThread
) -> None:
    # The first task completes; the others would poll forever.
    provider.do(lambda: provider.server.plan(TaskScript(), *[TaskScript(duration=None)] * 4))
    for outcome in client.generate_many([f"cat {i}" for i in range(5)], concurrency=5):
        assert outcome.ok
        break
    # The iterator went away with the loop: every poller is gone at once.
    assert tasks_on_loop(client) == 0
    assert client.generate("still usable").ok


def test_closing_the_iterator_cancels_the_batch(
    client: SyncBananaClient, provider: ProviderThread
) -> None:
    provider.do(lambda: provider.server.plan(TaskScript(), *[TaskScript(duration=None)] * 4))
    with client.generate_many([f"cat {i}" for i in range(5)], concurrency=5) as outcomes:
        assert next(outcomes).ok
        assert tasks_on_loop(client) > 0
    assert tasks_on_loop(client) == 0
    assert list(outcomes) == []


def test_a_dropped_iterator_is_cleaned_up_by_the_garbage_collector(
    client: SyncBananaClient, provider: ProviderThread
) -> None:
    provider.do(lambda: provider.server.plan(TaskScript(), *[TaskScript(duration=None)] * 4))
    outcomes = client.generate_many([f"cat {i}" for i in range(5)], concurrency=5)
    assert next(outcomes).ok
    cycle: list[object] = [outcomes]
    cycle.append(cycle)  # only the cycle collector can free it
    del outcomes, cycle
    gc.collect()
    assert tasks_on_loop(client) == 0


def test_another_thread_closing_the_iterator_ends_a_waiting_next(
    client: SyncBananaClient, provider: ProviderThread
) -> None:
    never_finishing(provider, 3)
    outcomes = client.generate_many(["a", "b", "c"], concurrency=3)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(list, outcomes)
        while provider.do(lambda: provider.server.count("query")) < 3:
            time.sleep(0.01)
        outcomes.close()
        assert waiting.result() == []
    assert tasks_on_loop(client) == 0


# -- closing -----------------------------------------------------------------------------


def test_close_closes_the_sessions_and_stops_the_thread(provider: ProviderThread) -> None:
    client = make_client(provider)
    client.generate("a cat")  # opens the API session
    inner = client._client
    thread = client._loop_thread.thread
    client.close()
    assert client.closed
    assert inner.closed
    assert not thread.is_alive()
    assert client._loop_thread.loop.is_closed()
    assert repr(client).endswith(" closed>")
    client.close()  # twice is harmless


def test_a_closed_client_raises_a_clear_error(provider: ProviderThread) -> None:
    with make_client(provider) as client:
        pass
    with pytest.raises(RuntimeError, match="SyncBananaClient is closed"):
        client.generate("a cat")
    with pytest.raises(RuntimeError, match="SyncBananaClient is closed"):
        client.generate_many(["a cat"])
    with pytest.raises(RuntimeError, match="SyncBananaClient is closed"), client:
        pass


def test_closing_from_another_thread_stops_running_calls(
    provider: ProviderThread,
) -> None:
    client = make_client(provider)
    never_finishing(provider, 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        wait = pool.submit(client.generate, "a slow cat")
        batch = pool.submit(lambda: list(client.generate_many(["a slow dog"])))
        while provider.do(lambda: provider.server.count("query")) < 2:
            time.sleep(0.01)
        client.close()
        with pytest.raises(RuntimeError, match="closed while this call was running"):
            wait.result()
        with pytest.raises(RuntimeError, match="closed while this call was running"):
            batch.result()


def test_a_dropped_client_is_closed_by_the_garbage_collector(provider: ProviderThread) -> None:
    client = make_client(provider)
    client.generate("a cat")
    inner = client._client
    thread = client._loop_thread.thread
    del client
    gc.collect()
    assert inner.closed
    assert not thread.is_alive()


# -- in a child process: interpreter exit and Ctrl-C ------------------------------------


def run_child(code: str, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "BANANA_URL": url, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-X", "dev", "-W", "error", "-c", PRELUDE + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


PRELUDE = f"""
import os, weakref
from banana_async import SyncBananaClient
KEY = {API_KEY!r}
URL = os.environ["BANANA_URL"]
"""


def test_interpreter_exit_closes_an_open_client(provider: ProviderThread) -> None:
    code = """
    def check():
        # At exit, finalizers run newest first: made before the client's,
        # this one runs after it.
        print("session closed:", inner.closed, "thread alive:", thread.is_alive())

    class Sentinel: pass
    sentinel = Sentinel()
    weakref.finalize(sentinel, check)

    client = SyncBananaClient(KEY, base_url=URL, poll_interval=0.01)
    client.generate("a cat")
    inner, thread = client._client, client._loop_thread.thread
    """
    child = run_child(code, provider.server.url)
    out, err = child.communicate()
    assert child.returncode == 0, err
    assert out.strip() == "session closed: True thread alive: False"
    assert err == ""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
@pytest.mark.parametrize(
    "call", ["client.generate('a slow cat')", "list(client.generate_many(['a', 'b']))"]
)
def test_ctrl_c_stops_the_work_and_reaches_the_caller(provider: ProviderThread, call: str) -> None:
    never_finishing(provider, 2)
    code = f"""
    import asyncio
    client = SyncBananaClient(KEY, base_url=URL, poll_interval=0.01, adaptive_polling=False)
    print("ready", flush=True)
    try:
        {call}
    except KeyboardInterrupt:
        print("interrupted")

    async def count():
        return len(asyncio.all_tasks()) - 1

    print("tasks left:", client._loop_thread.run(count))
    client.close()
    print("closed")
    """
    child = run_child(code, provider.server.url)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    queries_before = provider.do(lambda: provider.server.count("query"))
    # Blocked for sure once the provider sees it polling.
    while provider.do(lambda: provider.server.count("query")) < queries_before + 2:
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate()
    assert child.returncode == 0, err
    assert out.splitlines() == ["interrupted", "tasks left: 0", "closed"]
    assert err == ""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_one_ctrl_c_is_enough_inside_asyncio_run(provider: ProviderThread) -> None:
    # asyncio.run's own SIGINT handler only cancels its main task, which is
    # blocked in the call: the call must hear the first Ctrl-C itself.
    never_finishing(provider, 1)
    code = """
    import asyncio
    client = SyncBananaClient(KEY, base_url=URL, poll_interval=0.01, adaptive_polling=False)

    async def main():
        print("ready", flush=True)
        try:
            client.generate("a slow cat")
        except KeyboardInterrupt:
            print("interrupted")
        await asyncio.sleep(0)  # the main task was not cancelled
        print("still running")

    asyncio.run(main(), debug=False)  # debug mode would log the blocked loop
    client.close()
    print("closed")
    """
    child = run_child(code, provider.server.url)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    while provider.do(lambda: provider.server.count("query")) < 2:
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate()
    assert child.returncode == 0, err
    assert out.splitlines() == ["interrupted", "still running", "closed"]
    assert err == ""


# -- a callback that raises SystemExit or KeyboardInterrupt ------------------------------


def stopping_at(error: type[BaseException]) -> Callable[[ba.TaskEvent], None]:
    """A listener that raises ``error`` when a task starts processing (asyncio lets it out)."""

    def listener(event: ba.TaskEvent) -> None:
        if event.task.status is ba.TaskStatus.PROCESSING:
            raise error("stop here")

    return listener


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("batch", [False, True], ids=["generate", "generate_many"])
def test_a_callback_that_stops_the_loop_closes_the_client(
    provider: ProviderThread, error: type[BaseException], batch: bool
) -> None:
    provider.do(lambda: provider.server.plan(*[TaskScript(duration=0.05)] * 3))
    client = make_client(provider)
    inner = client._client

    def call() -> object:
        if batch:
            return list(client.generate_many(["a", "b", "c"], on_status=stopping_at(error)))
        return client.generate("a cat", on_status=stopping_at(error))

    with pytest.raises(error, match="stop here"):
        call()
    # The loop stopped: the client closed itself, and says so at once
    # rather than leaving the next call waiting for a loop that never runs.
    assert client.closed
    with pytest.raises(RuntimeError, match="SyncBananaClient is closed"):
        client.generate("another cat", timeout=20)
    with pytest.raises(RuntimeError, match="SyncBananaClient is closed"):
        client.generate_many(["another cat"])
    client.close()
    assert inner.closed
    assert not client._loop_thread.thread.is_alive()
    assert client._loop_thread.loop.is_closed()


def test_a_callback_that_stops_the_loop_stops_other_threads_calls(
    provider: ProviderThread,
) -> None:
    never_finishing(provider, 1)
    provider.do(lambda: provider.server.plan(TaskScript(duration=0.05)))
    client = make_client(provider)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(client.generate, "a slow cat")
        while provider.do(lambda: provider.server.count("query")) < 1:
            time.sleep(0.01)
        with pytest.raises(SystemExit):
            client.generate("a cat", on_status=stopping_at(SystemExit))
        # The other thread's call stops too, as asyncio.run's caller would.
        with pytest.raises(SystemExit):
            slow.result()
    client.close()
    assert client.closed


@pytest.mark.parametrize("error", ["SystemExit", "KeyboardInterrupt"])
def test_a_callback_that_stops_the_loop_leaves_nothing_open_at_exit(
    provider: ProviderThread, error: str
) -> None:
    code = f"""
    import banana_async as ba

    def listener(event):
        if event.task.status is ba.TaskStatus.PROCESSING:
            raise {error}("stop here")

    client = SyncBananaClient(KEY, base_url=URL, poll_interval=0.01)
    try:
        client.generate("a cat", on_status=listener)
    except {error}:
        print("raised; closed:", client.closed)
    # No close(): the interpreter's exit must find nothing open, and not hang.
    """
    provider.do(lambda: provider.server.plan(TaskScript(duration=0.05)))
    child = run_child(code, provider.server.url)
    out, err = child.communicate()
    assert child.returncode == 0, err
    assert out.splitlines() == ["raised; closed: True"]
    assert err == ""
