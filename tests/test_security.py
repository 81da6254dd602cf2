"""The security promises of issue #11 (point 6), one test each, named after the promise.

docs/security.md states each promise and names its test here. Every test
breaks the promise on purpose where it can (a provider that echoes the key
in every place it can put text, an image host on another port, an API that
redirects, hostile task ids and image URLs) and looks at the bytes that came
out: logs, reprs, tracebacks, files, database rows, Redis, the command
line's output, the requests other hosts received.

The key is distinctive (:data:`KEY`) and a leak is any run of
:data:`_WINDOW` of its characters (:func:`leaks`), so a key cut short in a
message still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

import banana_async as ba
from banana_async._png import make_png
from banana_async.cli import main
from banana_async.journal import Journal, JournalStore, PostgresStore, SQLiteStore
from banana_async.ratelimit import AdaptiveRateLimiter
from banana_async.testing import FakeBananaServer, Fault, FaultTarget, TaskScript

from .test_cli import ServerThread

KEY = "sk-Q7rT2vX9wLz4mN8pK3sB6yD1canary"
"""The API key of every test here: no other text contains a piece of it."""

_WINDOW = 8
"""A leak is any run of this many characters of the key (a key cut in a message too)."""

_PIECES = frozenset(KEY[i : i + _WINDOW] for i in range(len(KEY) - _WINDOW + 1))

ROOT = Path(__file__).resolve().parent.parent


def leaks(blob: str | bytes) -> list[str]:
    """The pieces of the key found in ``blob`` (empty: no leak)."""
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return sorted(piece for piece in _PIECES if piece in text)


def assert_no_key(what: str, blob: str | bytes) -> None:
    found = leaks(blob)
    assert not found, f"the API key leaked into {what}: {found[:3]}"


def test_the_leak_detector_sees_a_cut_key() -> None:
    # Without this, every other test here could pass by looking wrongly.
    assert leaks(f"error: invalid key {KEY[:_WINDOW]}...")
    assert leaks(KEY.encode())
    assert not leaks(f"sk- {KEY[: _WINDOW - 1]} and nothing else")


def test_the_security_page_names_every_test_here() -> None:
    # docs/security.md states each promise with its test: they stay in step.
    page = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_\w+)`", page))
    here = {name for name in globals() if name.startswith("test_")}
    helpers = {
        "test_the_leak_detector_sees_a_cut_key",
        "test_the_security_page_names_every_test_here",
    }
    assert named == here - helpers


# -- hosts of our own --------------------------------------------------------------------


class Host:
    """A web server on a loopback port that records every request it receives.

    ``handler`` answers each request; by default a small PNG.
    """

    def __init__(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
    ) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        if self.handler is not None:
            return await self.handler(request)
        return web.Response(body=make_png(4, 4, (1, 2, 3)), content_type="image/png")

    async def __aenter__(self) -> Host:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def assert_never_saw_the_key(self) -> None:
        for method, target, headers in self.requests:
            assert "Authorization" not in headers, (method, target)
            assert_no_key(f"a request to another host ({method} {target})", repr(headers))
            assert_no_key("a URL sent to another host", target)


@pytest.fixture
async def provider() -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=KEY, duration=0.05) as server:
        yield server


def client_of(server: FakeBananaServer, **options: Any) -> ba.BananaClient:
    settings: dict[str, Any] = {"base_url": server.url, "poll_interval": 0.02, **options}
    return ba.BananaClient(KEY, **settings)


# -- a provider that echoes the key everywhere it can ------------------------------------

# Echoes of the key in each place a provider puts text: the tests below
# trigger all of them and look for the key in what comes out.
_ECHOED = f"the key {KEY} is not allowed here"
FAILING_PROMPT = "echo the key in the failure"


def _scripts(body: dict[str, Any]) -> TaskScript:
    if body.get("prompt") == FAILING_PROMPT:
        return TaskScript(duration=0.05, outcome="fail", error=_ECHOED)
    return TaskScript(duration=0.05)


def echo_everywhere(server: FakeBananaServer, elsewhere: str) -> None:
    """Queue one answer echoing the key for each kind of answer the client reads."""
    server.script_for = _scripts
    json_error = json.dumps({"error": {"message": _ECHOED, "type": "api_error"}})
    for fault in (
        # A 5xx with the key in a JSON message (a create is then not sent again).
        Fault.status(500, body=json_error),
        # An HTML page, the key in its title.
        Fault.status(502, body=f"<html><title>{_ECHOED}</title></html>", content_type="text/html"),
        # A 200 that is an error in the provider's own shape.
        Fault.body(json.dumps({"code": 401, "msg": _ECHOED})),
        # A redirect to another host, the key in the Location.
        Fault.status(307, headers={"Location": f"{elsewhere}/steal?key={KEY}"}),
        # A body that is not JSON at all.
        Fault.body(f"not json {KEY}", content_type="text/plain"),
    ):
        server.inject(fault, on="create")
    for fault in (
        # A 5xx on a poll is retried, and logged.
        Fault.status(500, body=json_error),
        Fault.status(404, body=json_error),
        Fault.status_word(f"busy-{KEY}"),
        Fault.edit({"model": KEY, "object": f"obj-{KEY}"}),
    ):
        server.inject(fault, on="query")


# Five creates meet the five faults above; the failing prompt is created.
PROMPTS = [*(f"prompt {i}" for i in range(7)), FAILING_PROMPT]


async def provoke_every_echo(
    server: FakeBananaServer,
    tmp_path: Path,
    *,
    journal: str | os.PathLike[str] | Journal | JournalStore | None = None,
    batch: str | None = None,
    **options: Any,
) -> tuple[list[BaseException], list[object]]:
    """Run a batch and single calls against a provider echoing the key.

    Returns:
        Every error raised or reported, and every public object met on the way
        (client, outcomes, tasks, events, requests), for the callers to look at.
    """
    errors: list[BaseException] = []
    seen: list[object] = []
    async with Host() as elsewhere:
        echo_everywhere(server, elsewhere.url)
        events: list[ba.TaskEvent] = []

        def listen(event: ba.TaskEvent) -> None:
            events.append(event)
            if len(events) == 1:  # a listener's error is logged, with its text
                raise RuntimeError(f"the listener saw {KEY}")

        client = client_of(server, on_status=listen, **options)
        seen.append(client)
        async with client:
            seen.append(client)
            extra: dict[str, Any] = {} if batch is None else {"batch": batch}
            async for outcome in client.generate_many(
                PROMPTS, concurrency=1, journal=journal, download_to=tmp_path / "images", **extra
            ):
                seen += [outcome, outcome.request, outcome.task]
                if outcome.error is not None:
                    errors.append(outcome.error)
            assert server.pending_faults == 0, "every echo was sent"
            # Single calls: a 401 and a 404 echoing the key, a failed task, an image
            # over its cap.
            server.inject(
                Fault.status(401, body=json.dumps({"error": {"message": _ECHOED}})), on="create"
            )
            server.inject(Fault.status(404, body=_ECHOED), on="query", times=1)
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: client.create("a cat"),
                lambda: client.get("no-such-task"),
                lambda: client.generate(FAILING_PROMPT),
                lambda: client.download(
                    ba.Task("t", ba.TaskStatus.COMPLETED, image_url=f"{elsewhere.url}/x.png"),
                    tmp_path / "not-images",
                    max_bytes=10,
                ),
            ]
            for call in calls:
                with pytest.raises(ba.BananaError) as caught:
                    await call()
                errors.append(caught.value)
            # A wait that ends on its deadline, the last status word echoing the key.
            server.plan(TaskScript(duration=None))
            slow = await client.create("a slow cat")
            server.inject(Fault.status_word(f"busy-{KEY}"), on="query", times=1000)
            with pytest.raises(ba.TaskTimeoutError) as late:
                await client.wait(slow, timeout=0.1)
            errors.append(late.value)
            server.finish(slow.id)
            seen += events
            seen += [e.task for e in events]
        seen.append(client)
        elsewhere.assert_never_saw_the_key()
    # A provider that cannot be reached at all.
    dead = f"http://127.0.0.1:{_free_port()}"
    async with ba.BananaClient(KEY, base_url=dead, max_retries=0) as lost:
        with pytest.raises(ba.APIConnectionError) as unreachable:
            await lost.get("t")
        errors.append(unreachable.value)
    seen += errors
    return errors, seen


def _free_port() -> int:
    """A loopback port nobody listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _every_text_of(error: BaseException) -> str:
    """An error as people and error trackers see it: message, attributes, traceback."""
    parts = [str(error), repr(error)]
    parts += [repr(value) for value in vars(error).values()]
    parts += traceback.format_exception(error)
    return "\n".join(parts)


# -- the key stays out of what people read --------------------------------------------------


async def test_the_key_never_appears_in_logs_at_any_level(
    provider: FakeBananaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every logger (aiohttp's and asyncio's too), every level, tracebacks included;
    # the package's logger too, whatever level an earlier test left it at.
    for name in (None, "banana_async", "aiohttp", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    await provoke_every_echo(provider, tmp_path, journal=tmp_path / "journal.sqlite")
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    lines = [formatter.format(record) for record in caplog.records]
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was on
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # errors were logged
    assert_no_key("the log", "\n".join(lines))


def test_the_key_never_appears_in_logs_with_banana_log_debug(tmp_path: Path) -> None:
    # BANANA_LOG=debug as a user sets it: the package's own handler, in a fresh process.
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from tests.test_security import provoke_every_echo\n"
        "from banana_async.testing import FakeBananaServer\n"
        "async def main():\n"
        f"    async with FakeBananaServer(api_key={KEY!r}, duration=0.05) as server:\n"
        "        await provoke_every_echo(server, Path(sys.argv[1]))\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "BANANA_LOG": "debug", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert " DEBUG banana_async: " in done.stderr  # the handler wrote DEBUG lines
    assert_no_key("the BANANA_LOG=debug output", done.stdout + done.stderr)


async def test_the_key_never_appears_in_a_repr_or_str(
    provider: FakeBananaServer, tmp_path: Path
) -> None:
    store = await SQLiteStore.open(tmp_path / "journal.sqlite")
    async with store:
        _, seen = await provoke_every_echo(provider, tmp_path, journal=store)
        seen += [store, store.journal, *store.journal.entries()]
    seen += [store, AdaptiveRateLimiter(requests_per_second=3.0)]
    seen.append(client_of(provider).rate_limiter)
    with ba.SyncBananaClient(KEY, base_url=provider.url) as sync_client:
        seen.append(sync_client)
    seen.append(sync_client)
    # Each kind of object the package hands out was met.
    met = {type(obj).__name__ for obj in seen}
    for kind in (
        "BananaClient",
        "SyncBananaClient",
        "Outcome",
        "GenerationRequest",
        "Task",
        "TaskEvent",
        "SQLiteStore",
        "Journal",
        "JournalEntry",
        "AdaptiveRateLimiter",
        "TaskFailedError",
        "AuthenticationError",
        "ServerError",
        "ProviderError",
        "APIStatusError",
        "ResponseValidationError",
        "NotFoundError",
        "DownloadError",
        "TaskTimeoutError",
        "APIConnectionError",
    ):
        assert kind in met, kind
    for obj in seen:
        assert_no_key(f"the repr of a {type(obj).__name__}", repr(obj))
        assert_no_key(f"the str of a {type(obj).__name__}", str(obj))


async def test_the_key_never_appears_in_exception_text_or_tracebacks(
    provider: FakeBananaServer, tmp_path: Path
) -> None:
    errors, _ = await provoke_every_echo(provider, tmp_path)
    errors.append(await _refused_by_the_blocking_client(provider))
    # The provider's echoes reached the errors (redacted): they were tested.
    assert sum("[redacted" in _every_text_of(e) for e in errors) >= 7
    for error in errors:
        assert_no_key(f"a {type(error).__name__}", _every_text_of(error))
        # Error trackers print every frame's locals, chained exceptions too.
        with_locals = traceback.TracebackException.from_exception(error, capture_locals=True)
        assert_no_key(f"the locals of a {type(error).__name__}", "".join(with_locals.format()))
    # The errors the constructor raises about the key never show it.
    for bad_key, why in ((f"{KEY} x", "U+0020"), (f"{KEY[:9]}\n{KEY[9:]}", "a line break")):
        with pytest.raises(ba.InvalidRequestError) as refused:
            ba.BananaClient(bad_key, base_url="http://example.com")
        assert why in str(refused.value)
        assert_no_key("a refusal", "".join(traceback.format_exception(refused.value)))


async def _refused_by_the_blocking_client(provider: FakeBananaServer) -> BaseException:
    """The blocking client's error for a 401 echoing the key, raised from another thread.

    A function of its own: the test's frame, whose locals the traceback
    shows, holds no text with the key.
    """
    provider.inject(
        Fault.status(401, body=json.dumps({"error": {"message": _ECHOED}})), on="create"
    )
    with (
        ba.SyncBananaClient(KEY, base_url=provider.url) as blocking,
        pytest.raises(ba.AuthenticationError) as refused,
    ):
        await asyncio.to_thread(blocking.create, "a cat")
    return refused.value


# -- the key stays out of what is stored -------------------------------------------------


async def test_the_key_never_appears_in_the_sqlite_journal(
    provider: FakeBananaServer, tmp_path: Path
) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal.open(path) as journal:
        await provoke_every_echo(provider, tmp_path, journal=journal)
        # Recorded errors (with their echoes) are in the file or its write-ahead log.
        files = [p for p in tmp_path.iterdir() if p.name.startswith("journal.sqlite")]
        assert {p.name for p in files} >= {"journal.sqlite", "journal.sqlite-wal"}
        assert any(entry.error for entry in journal.entries())
        for file in files:
            assert_no_key(file.name, file.read_bytes())
    assert_no_key("the checkpointed journal", path.read_bytes())


async def test_the_key_never_appears_in_postgres_rows(
    provider: FakeBananaServer, tmp_path: Path, postgres_url: str
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    store = await PostgresStore.open(postgres_url, batch="security-canary")
    async with store:
        await provoke_every_echo(provider, tmp_path, journal=store)
        assert_no_key("the repr of a PostgresStore", repr(store))
    connection = await asyncpg.connect(postgres_url)
    try:
        tables = await connection.fetch(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) AS name"
            " FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        assert tables
        rows: list[str] = []
        for table in tables:
            rows += [r[0] for r in await connection.fetch(f"SELECT t::text FROM {table[0]} t")]
    finally:
        await connection.close()
    assert any("security-canary" in row for row in rows)  # the batch's rows were read
    assert any("redacted" in row for row in rows)  # with the echoes, redacted
    assert_no_key("a Postgres row", "\n".join(rows))


async def test_the_key_never_appears_in_redis(
    provider: FakeBananaServer, tmp_path: Path, redis_url: str
) -> None:
    import redis.asyncio as redis_asyncio  # the redis extra: see redis_url

    # 429s make the limiters write a pause and a learned limit.
    provider.inject(Fault.status(429, headers={"Retry-After": "1"}), on="create", times=2)
    _, met = await provoke_every_echo(provider, tmp_path, rate_limit_url=redis_url)
    limiters = [obj.rate_limiter for obj in met if isinstance(obj, ba.BananaClient)]
    assert {type(limiter).__name__ for limiter in limiters} == {"RedisRateLimiter"}
    for limiter in limiters:
        assert_no_key("the repr of a RedisRateLimiter", repr(limiter))
    connection = redis_asyncio.Redis.from_url(redis_url)
    seen: list[bytes] = []
    try:
        async for name in connection.scan_iter("*"):
            seen.append(name)
            seen += await _redis_values(connection, name)
        seen += [str(await connection.client_list()).encode()]
    finally:
        await connection.aclose()
    assert len(seen) > 2
    assert b"paused" in b"".join(seen)  # the 429's pause went through Redis
    for blob in seen:
        assert_no_key("Redis", blob)


async def _redis_values(connection: Any, name: bytes) -> list[bytes]:
    """Every value under ``name``, whatever its type, as bytes."""
    kind = (await connection.type(name)).decode()
    if kind == "string":
        return [await connection.get(name)]
    if kind == "hash":
        return [b for pair in (await connection.hgetall(name)).items() for b in pair]
    if kind == "list":
        return list(await connection.lrange(name, 0, -1))
    if kind == "set":
        return list(await connection.smembers(name))
    if kind == "zset":
        return [m for m, _ in await connection.zrange(name, 0, -1, withscores=True)]
    if kind == "stream":
        return [repr(e).encode() for e in await connection.xrange(name)]
    raise AssertionError(f"a Redis value of type {kind}: look at it too")


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def echoing(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    """A provider in a thread echoing the key; a user's environment pointed at it."""
    thread = ServerThread(FakeBananaServer(api_key=KEY, duration=0.05))
    thread.start()
    try:
        monkeypatch.setenv("BANANA_API_KEY", KEY)
        monkeypatch.setenv("BANANA_BASE_URL", thread.server.url)
        monkeypatch.delenv("BANANA_DIALECT", raising=False)
        monkeypatch.delenv("BANANA_RATE_LIMIT_URL", raising=False)
        yield thread
    finally:
        thread.stop()


def test_the_key_never_appears_in_the_manifest(
    echoing: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    echoing.run(lambda: echo_everywhere(echoing.server, "http://127.0.0.1:9"))
    code = main(["batch", str(prompts), "--out", str(out), "--concurrency", "1",
                 "--poll-interval", "0.02"])  # fmt: skip
    assert code == 1  # some inputs failed, with the echoes
    manifest = (out / "manifest.jsonl").read_bytes()
    assert manifest.count(b"\n") == len(PROMPTS)
    assert b"redacted" in manifest
    assert_no_key("the manifest", manifest)
    assert_no_key("the output of batch", "".join(capsys.readouterr()))


def test_the_key_never_appears_in_cli_output(
    echoing: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = echoing.server
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    journal = tmp_path / "journal.sqlite"

    # The batch as a user runs it: its own process, BANANA_LOG=debug.
    echoing.run(lambda: echo_everywhere(server, "http://127.0.0.1:9"))
    done = subprocess.run(
        [sys.executable, "-m", "banana_async", "batch", str(prompts), "--out", str(out),
         "--journal", str(journal), "--concurrency", "1", "--poll-interval", "0.02"],
        capture_output=True, text=True, env={**os.environ, "BANANA_LOG": "debug"},
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # some inputs failed, with echoes
    assert " DEBUG banana_async: " in done.stderr
    assert "redacted" in done.stdout + done.stderr  # the echoes were shown, redacted
    assert_no_key("the output of batch", done.stdout + done.stderr)

    def cli(*argv: str, faults: tuple[tuple[Fault, FaultTarget], ...] = ()) -> str:
        """Every other command in-process, at DEBUG (-vv), even one that crashed."""
        for fault, on in faults:
            echoing.run(functools.partial(server.inject, fault, on=on))
        try:
            main(["-vv", *argv])
        except BaseException as exc:  # its traceback is looked at too
            print("".join(traceback.format_exception(exc)), file=sys.stderr)
        output = "".join(capsys.readouterr())
        assert_no_key(f"the output of {' '.join(argv)}", output)
        return output

    task_ids = list(server.tasks)
    ok_id = next(t for t, task in server.tasks.items() if task.script.outcome == "complete")
    json_error = json.dumps({"error": {"message": _ECHOED}})
    outputs = [
        cli("generate", "a cat", "--out", str(out), "--poll-interval", "0.02"),
        cli("generate", FAILING_PROMPT, "--out", str(out), "--poll-interval", "0.02"),
        cli(
            "--json", "generate", "a cat", faults=((Fault.status(401, body=json_error), "create"),)
        ),
        cli("status", ok_id),
        cli("--json", "status", "missing", faults=((Fault.status(404, body=json_error), "query"),)),
        cli("status", ok_id, faults=((Fault.status_word(f"odd-{KEY}"), "query"),)),
        cli("download", "--out", str(out), *task_ids),
        cli("--json", "journal", str(journal)),
        cli("journal", str(journal)),
        cli("models"),
        cli("--base-url", "http://example.com", "status", ok_id),
        cli("batch", str(tmp_path / "missing.txt"), "--out", str(out)),
        cli("demo", "--count", "2", "--out", str(tmp_path / "demo")),
    ]
    assert sum("redacted" in text for text in outputs) >= 3
    assert all("DEBUG" in text for text in outputs[:2])


# -- the key goes only to the API --------------------------------------------------------


async def test_the_key_never_goes_to_an_image_host(
    provider: FakeBananaServer, tmp_path: Path
) -> None:
    async with Host() as third:

        async def hop(request: web.Request) -> web.StreamResponse:
            if request.path == "/hop":  # a CDN redirecting to another host
                raise web.HTTPFound(f"{third.url}/image.png")
            return web.Response(body=make_png(4, 4, (9, 9, 9)), content_type="image/png")

        async with Host(hop) as images:
            # The API's own host, by another name: still not the configured API host.
            by_name = provider.url.replace("127.0.0.1", "localhost")
            urls = [f"{images.url}/a.png", f"{images.url}/hop", f"{by_name}/images/x.png"]
            provider.inject(Fault.edit({"image_url": urls[1]}), on="query", times=1000)
            async with client_of(provider) as client:
                async for outcome in client.generate_many(["a", "b"], download_to=tmp_path):
                    assert outcome.ok, outcome
                for i, url in enumerate(urls[:2]):
                    task = ba.Task(f"t{i}", ba.TaskStatus.COMPLETED, image_url=url)
                    await client.download(task, tmp_path)
            # A borrowed session downloads through itself: still without the key.
            async with (
                aiohttp.ClientSession() as session,
                client_of(provider, session=session) as borrowing,
            ):
                task = ba.Task("b", ba.TaskStatus.COMPLETED, image_url=urls[1])
                await borrowing.download(task, tmp_path)
            with ba.SyncBananaClient(KEY, base_url=provider.url) as sync_client:
                task = ba.Task("s", ba.TaskStatus.COMPLETED, image_url=urls[1])
                await asyncio.to_thread(sync_client.download, task, tmp_path)
            images_asked = len(images.requests)
        images.assert_never_saw_the_key()
        third.assert_never_saw_the_key()
        assert images_asked >= 5
        assert len(third.requests) >= 5  # the redirects were followed
    # The loopback name with the API's port, through the API's own server.
    async with client_of(provider) as client:
        task = ba.Task("n", ba.TaskStatus.COMPLETED, image_url=urls[2])
        with pytest.raises(ba.NotFoundError):
            await client.download(task, tmp_path)
    image_requests = [r for r in provider.requests if r.kind == "image"]
    assert image_requests
    assert all(r.authorization is None for r in image_requests)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_the_key_never_follows_a_redirect(
    provider: FakeBananaServer, code: int, tmp_path: Path
) -> None:
    async with Host() as elsewhere:
        async with client_of(provider, max_retries=3) as client:
            provider.inject(
                Fault.status(code, headers={"Location": f"{elsewhere.url}/v1/steal"}), on="create"
            )
            with pytest.raises(ba.APIStatusError) as on_create:
                await client.create("a cat")
            task = await client.create("a cat")
            provider.inject(
                Fault.status(code, headers={"Location": f"{elsewhere.url}/v1/steal"}),
                on="query",
                times=100,
            )
            with pytest.raises(ba.APIStatusError) as on_query:
                await client.get(task)
        # Redirects are not followed at all: the other host heard nothing.
        assert elsewhere.requests == []
    for error in (on_create.value, on_query.value):
        assert error.status_code == code
        assert "redirects are not followed" in str(error)


async def test_the_key_goes_only_to_the_api_host_whatever_the_task_id(
    provider: FakeBananaServer,
) -> None:
    async with Host() as elsewhere:
        port = elsewhere.url.rpartition(":")[2]
        ids = [
            f"{elsewhere.url}/steal",
            f"//127.0.0.1:{port}/steal",
            f"@127.0.0.1:{port}",
            f"\\\\127.0.0.1:{port}\\steal",
            "../../../../steal",
            "x?next=//elsewhere#",
        ]
        # Ids a provider hands out, polled by a batch ...
        provider.plan(*(TaskScript(duration=0.05, task_id=task_id) for task_id in ids))
        async with client_of(provider) as client:
            async for outcome in client.generate_many([f"p{i}" for i in range(len(ids))]):
                assert outcome.ok, outcome
            # ... and ids a caller passes.
            for task_id in ids:
                assert (await client.get(task_id)).id == task_id
        assert elsewhere.requests == []
    polled = {r.task_id for r in provider.requests if r.kind == "query"}
    assert polled == set(ids)


# -- plain HTTP only on loopback -------------------------------------------------------------


class _LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1 and remembers the names it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com:{port}",
        "HTTP://API.EXAMPLE.COM:{port}/",
        "http://localhost.example.com:{port}",
        "http://127.0.0.1.example.com:{port}",
        "http://localhost@api.example.com:{port}",
        "http://127.0.0.1:{port}@api.example.com:{port}",
        "http://api.example.com:{port}#@127.0.0.1",
        "http://api.example.com:{port}\\@127.0.0.1",
        "http://[::ffff:a00:1]:{port}",
    ],
)
async def test_plain_http_off_loopback_is_refused_before_any_traffic(
    provider: FakeBananaServer, url: str
) -> None:
    resolver = _LoopbackResolver()
    url = url.format(port=provider.port)
    # Every name reaches the fake provider through this resolver: were the
    # URL let through, the create would arrive there.
    connector = aiohttp.TCPConnector(resolver=resolver)
    async with aiohttp.ClientSession(connector=connector) as session:
        choices: list[dict[str, Any]] = [{"base_url": url}, {"create_base_url": url}]
        for urls in [*choices, {"query_base_url": url}]:
            with pytest.raises(ba.InvalidRequestError, match=r"plain HTTP|user name or password"):
                ba.BananaClient(KEY, session=session, **urls)
        # The same session does reach the provider through the resolver over https-less
        # loopback names, so its silence above means something.
        async with ba.BananaClient(KEY, session=session, base_url=provider.url) as client:
            await client.create("a cat")
    assert resolver.asked == []
    assert [r.kind for r in provider.requests] == ["create"]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "LOCALHOST", "localhost.", "127.0.0.2", "[::1]", "[::ffff:7f00:1]"],
)
def test_plain_http_on_loopback_is_allowed(host: str) -> None:
    client = ba.BananaClient(KEY, base_url=f"http://{host}:8080")
    assert client.create_base_url == f"http://{host}:8080"


# -- downloads ------------------------------------------------------------------------------


async def test_downloads_are_capped_in_size(provider: FakeBananaServer, tmp_path: Path) -> None:
    png = make_png(4, 4, (5, 5, 5))
    # 1 MiB of image once decoded, a few KiB on the wire.
    bomb = gzip.compress(png + b"\0" * (1 << 20))

    async def huge(request: web.Request) -> web.StreamResponse:
        if request.path == "/bomb.png":
            headers = {"Content-Type": "image/png", "Content-Encoding": "gzip"}
            return web.Response(body=bomb, headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if request.path == "/announced.png":
            response.content_length = int(request.query["length"])
        await response.prepare(request)
        await response.write(png)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # 4 MiB, far past the cap, unless cut off first
                await response.write(b"\0" * 65536)
        return response

    dest = tmp_path / "images"
    async with Host(huge) as host, client_of(provider) as client:
        for name in ("streamed.png", "announced.png?length=10000000", "bomb.png"):
            task = ba.Task(name, ba.TaskStatus.COMPLETED, image_url=f"{host.url}/{name}")
            with pytest.raises(ba.DownloadError) as too_large:
                await client.download(task, dest, max_bytes=100_000)
            assert too_large.value.reason == "too_large"
        # The default cap, in a batch: one byte over it is refused.
        over = ba.download.DEFAULT_MAX_IMAGE_BYTES + 1
        provider.inject(
            Fault.edit({"image_url": f"{host.url}/announced.png?length={over}"}),
            on="query",
            times=1000,
        )
        async for outcome in client.generate_many(["a"], download_to=dest):
            assert isinstance(outcome.error, ba.DownloadError)
            assert outcome.error.reason == "too_large"
    assert len(host.requests) == 4
    assert list(dest.iterdir()) == []  # no partial file is left


async def test_downloads_refuse_what_is_not_an_image(
    provider: FakeBananaServer, tmp_path: Path
) -> None:
    page = b"<!doctype html><html><body>login</body></html>" * 10

    async def pretend(request: web.Request) -> web.StreamResponse:
        if request.path == "/typed.png":  # HTML served as image/png
            return web.Response(body=page, content_type="image/png")
        if request.path == "/short.png":  # fewer bytes than any image's signature
            return web.Response(body=b"<p>", content_type="image/png")
        return web.Response(body=page, content_type="text/html")

    dest = tmp_path / "images"
    async with Host(pretend) as host, client_of(provider) as client:
        for name in ("typed.png", "short.png", "page.png"):
            task = ba.Task(name, ba.TaskStatus.COMPLETED, image_url=f"{host.url}/{name}")
            with pytest.raises(ba.DownloadError) as refused:
                await client.download(task, dest)
            assert refused.value.reason == "not_an_image"
    assert list(dest.iterdir()) == []


HOSTILE_IDS = [
    "../../x",
    "../../../../../../tmp/escaped",
    "/etc/passwd",
    "..\\x",
    "..\\..\\x",
    "C:\\Windows\\x",
    "a\0b",
    "..",
    ".",
    "",
    "x" * 5000,
    "../" * 300 + "x",
    "con",
    "~/x",
    "\u202e.gnp",
]


async def test_downloads_never_leave_the_destination_folder(
    provider: FakeBananaServer, tmp_path: Path
) -> None:
    async def disposition(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=make_png(4, 4, (7, 7, 7)),
            content_type="image/png",
            headers={"Content-Disposition": 'attachment; filename="../../../disposed.png"'},
        )

    work = tmp_path / "work"
    dest = work / "images"
    saved: list[Path] = []
    async with Host(disposition) as host, client_of(provider) as client:
        urls = [
            f"{host.url}/../../escaped.png",
            f"{host.url}/a/%2e%2e/%2e%2e/escaped.png",
            f"{host.url}/..%2f..%2fescaped.png",
            f"{host.url}/x.png?name=../../escaped.png",
        ]
        for i, task_id in enumerate(HOSTILE_IDS):
            url = urls[i % len(urls)]
            task = ba.Task(task_id, ba.TaskStatus.COMPLETED, image_url=url)
            saved.append(await client.download(task, dest))
        # Ids the provider hands out, through a batch.
        provider.plan(*(TaskScript(duration=0.05, task_id=t) for t in HOSTILE_IDS[:4]))
        async for outcome in client.generate_many(list("abcd"), download_to=dest):
            assert outcome.ok, outcome
            assert outcome.path is not None
            saved.append(outcome.path)
    assert len(host.requests) == len(HOSTILE_IDS)
    for path in saved:
        assert path.parent == dest
        assert path.resolve().parent == dest.resolve()
    # Distinct ids, distinct files (the batch's ids are the first four again).
    assert len(set(saved)) == len(HOSTILE_IDS)
    # Nothing was written anywhere but the destination.
    everything = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert everything == {
        Path("work"),
        Path("work/images"),
        *(p.relative_to(tmp_path) for p in saved),
    }


# -- files readable by their owner only -----------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0 for the test: any mode stricter than 0666 is the code's own doing."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_the_journal_and_its_wal_and_shm_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    # Not exclusive: then SQLite keeps the write-ahead log's index in a -shm file.
    with Journal.open(path, exclusive=False) as journal:
        journal.bind_provider("nano", "https://a.example", "https://a.example")
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["journal.sqlite", "journal.sqlite-shm", "journal.sqlite-wal"]
        for name in files:
            assert _mode(tmp_path / name) == 0o600, name
    # Exclusive (the default), on a new file and on the same one again.
    other = tmp_path / "exclusive.sqlite"
    for _ in range(2):
        with Journal.open(other) as journal:
            journal.bind_provider("nano", "https://a.example", "https://a.example")
            assert (tmp_path / "exclusive.sqlite-wal").exists()
            for file in tmp_path.glob("exclusive.sqlite*"):
                assert _mode(file) == 0o600, file.name


@pytest.mark.usefixtures("permissive_umask")
def test_the_manifest_is_private(
    echoing: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["batch", str(prompts), "--out", str(out), "--journal",
                 str(tmp_path / "journal.sqlite"), "--poll-interval", "0.02"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert _mode(out / "manifest.jsonl") == 0o600
    assert _mode(tmp_path / "journal.sqlite") == 0o600
    # Run after run, the manifest is appended to, and stays private.
    assert main(["batch", str(prompts), "--out", str(out), "--poll-interval", "0.02"]) == 0
    assert (out / "manifest.jsonl").read_text(encoding="utf-8").count("\n") == 4
    assert _mode(out / "manifest.jsonl") == 0o600


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of the test's own, as the Redis tests start one.

    Imported here, not at the top: without the redis extra only the Redis
    test is skipped, not this whole module.
    """
    pytest.importorskip(
        "redis.asyncio", reason="the redis extra: pip install 'banana-async[redis]'"
    )
    from ._servers import redis_server

    with redis_server(tmp_path) as server:
        yield server.url
