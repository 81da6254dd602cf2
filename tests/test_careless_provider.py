"""A careless provider and careless input, over real loopback HTTP (issue #6).

Each test here failed on the code before the fix it names: the key leaking in
escaped forms, ids dropped over fields the client does not need, a completed
task without a usable image polled until the deadline, a create sent after
its deadline, and inputs that raised foreign exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import traceback
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, FakeClock, Fault, TaskScript

from .conftest import API_KEY

# A key with characters that JSON, URLs and HTML each spell differently.
KEY = "sk-live/ab+cd=ef&gh<9>"


def spellings(key: str) -> list[str]:
    """The key as careless providers echo it: escaped for JSON, URLs and HTML."""
    php = key.replace("/", "\\/")  # PHP's json_encode escapes "/" by default
    unicode = "".join(f"\\u{ord(c):04x}" if not c.isalnum() else c for c in key)
    unicode_upper = "".join(f"\\u{ord(c):04X}" for c in key)
    percent = quote(key, safe="")
    html = key.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    numeric = "".join(f"&#{ord(c)};" for c in key)
    return [key, php, unicode, unicode_upper, percent, percent.lower(), html, numeric]


def assert_no_key(texts: Iterable[str]) -> None:
    for text in texts:
        for spelling in spellings(KEY):
            assert spelling not in text, f"the key leaked as {spelling!r} in {text[:300]!r}"


@pytest.fixture
async def keyed_server(clock: FakeClock) -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=KEY, duration=None, clock=clock.time) as srv:
        yield srv


def client_for(server: FakeBananaServer, clock: FakeClock, **options: object) -> ba.BananaClient:
    settings: dict[str, object] = {
        "base_url": server.url,
        "clock": clock,
        "poll_interval": 2.0,
        "timeout": 5.0,
        **options,
    }
    return ba.BananaClient(KEY, **settings)  # type: ignore[arg-type]


# -- 1. the key never shows, however it is echoed ----------------------------------


@pytest.mark.parametrize("form", range(len(spellings(KEY))))
async def test_an_echoed_key_is_redacted_in_every_spelling(
    keyed_server: FakeBananaServer, clock: FakeClock, form: int
) -> None:
    echoed = spellings(KEY)[form]
    body = '{"error": {"message": "invalid key ' + echoed + '"}}'
    keyed_server.inject(Fault.status(401, body=body), on="create")
    async with client_for(keyed_server, clock) as client:
        with pytest.raises(ba.AuthenticationError) as info:
            await client.create("a cat")
    exc = info.value
    assert_no_key([str(exc), repr(exc.args), exc.body])
    assert "[redacted]" in str(exc)  # the message decodes the JSON, then redacts
    assert "[redacted]" in exc.body  # the raw body is redacted as it was spelled


async def test_headers_kept_on_errors_are_redacted(
    keyed_server: FakeBananaServer, clock: FakeClock
) -> None:
    location = f"https://login.example/?token={quote(KEY, safe='')}&raw={KEY}"
    keyed_server.inject(
        Fault.status(302, headers={"Location": location, "X-Echo": KEY}), on="create"
    )
    async with client_for(keyed_server, clock) as client:
        with pytest.raises(ba.APIStatusError) as info:
            await client.create("a cat")
    exc = info.value
    assert exc.status_code == 302
    assert "redirect to" in str(exc)
    assert_no_key([str(exc), *exc.headers.values(), *exc.headers.keys()])
    assert exc.headers["X-Echo"] == "[redacted]"


async def test_a_failed_poll_logs_no_key(
    keyed_server: FakeBananaServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="banana_async")
    escaped = KEY.replace("/", "\\/")
    keyed_server.inject(
        Fault.status(503, body='{"message": "upstream saw ' + escaped + '"}'), on="query", times=2
    )
    async with client_for(keyed_server, clock) as client:
        task = await client.create("a cat")
        keyed_server.finish(task.id)
        done = await client.wait(task)
    assert done.ok
    assert "polling" in caplog.text  # the failed polls were logged at INFO
    assert_no_key([caplog.text])


async def test_a_failure_message_echoing_the_key_is_redacted(
    keyed_server: FakeBananaServer, clock: FakeClock
) -> None:
    keyed_server.plan(TaskScript(outcome="fail", error=f"token {KEY} was refused"))
    async with client_for(keyed_server, clock) as client:
        with pytest.raises(ba.TaskFailedError) as info:
            await client.generate("a cat")
    exc = info.value
    assert exc.task.error is not None
    assert_no_key([str(exc), exc.error, exc.task.error])
    assert exc.error == "token [redacted] was refused"


async def test_a_key_inside_a_task_id_does_not_mangle_the_id(clock: FakeClock) -> None:
    # The body is parsed as it came; only text shown to people is redacted.
    async with FakeBananaServer(api_key="k", duration=None, clock=clock.time) as server:
        server.plan(TaskScript(task_id="abk123k", duration=1.0))
        async with ba.BananaClient("k", base_url=server.url, clock=clock) as client:
            task = await client.generate("a cat")
    assert task.ok
    assert task.id == "abk123k"
    assert {r.path for r in server.requests if r.kind == "query"} == {"/v1/result/abk123k"}


async def test_a_key_echoed_in_a_good_answer_is_redacted_from_what_people_read(
    keyed_server: FakeBananaServer,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="banana_async")
    echo = {"model": f"model for {KEY}", "object": f"obj {KEY}"}
    keyed_server.inject(Fault.edit({**echo, "status": f"queued for {KEY}"}), on="create")
    keyed_server.inject(Fault.edit({**echo, "status": f"throttled {KEY}"}), on="query", times=50)
    path = tmp_path / "batch.sqlite"
    async with client_for(keyed_server, clock) as client:
        (outcome,) = [o async for o in client.generate_many(["a"], timeout=10, journal=path)]
    assert isinstance(outcome.error, ba.TaskTimeoutError)
    task = outcome.task
    assert task is not None
    assert task.id in keyed_server.tasks  # the id is used, not read: kept as it came
    shown = [task.raw_status, task.model or "", task.object or "", repr(task), str(outcome.error)]
    assert_no_key([*shown, caplog.text, path.read_bytes().decode("utf-8", "replace")])
    assert task.raw_status == "throttled [redacted]"


async def test_an_error_keeps_no_trace_of_the_key_in_what_it_came_from(
    keyed_server: FakeBananaServer, clock: FakeClock
) -> None:
    keyed_server.inject(
        Fault.body(f"gateway: bad key {KEY}", content_type="text/plain"), on="create"
    )
    async with client_for(keyed_server, clock) as client:
        with pytest.raises(ba.ResponseValidationError) as info:
            await client.create("a cat")
    exc = info.value
    assert exc.__context__ is None  # the JSON decoder's error held the whole body
    assert exc.__cause__ is None
    # An error tracker prints the locals of every frame of the traceback.
    report = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    assert "_request" in report
    assert_no_key([report])


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda k: quote(quote(k, safe=""), safe=""), id="percent-twice"),
        pytest.param(lambda k: "".join(f"&#{ord(c)}" for c in k), id="entities-without-semicolon"),
        pytest.param(lambda k: quote(k.replace("/", "\\/"), safe=""), id="percent-of-json-escape"),
    ],
)
async def test_a_key_under_two_layers_of_escaping_is_redacted(
    keyed_server: FakeBananaServer, clock: FakeClock, echo: Any
) -> None:
    hidden = echo(KEY)
    keyed_server.inject(
        Fault.status(401, body='{"error": "' + hidden + '"}', headers={"Location": hidden}),
        on="create",
    )
    async with client_for(keyed_server, clock) as client:
        with pytest.raises(ba.AuthenticationError) as info:
            await client.create("a cat")
    exc = info.value
    texts = [str(exc), exc.body, *exc.headers.values()]
    assert all(hidden not in text for text in texts)
    assert_no_key(texts)


async def test_header_names_are_redacted_too(
    keyed_server: FakeBananaServer, clock: FakeClock
) -> None:
    plain = "sk-plain-0123456789abcdef"
    async with FakeBananaServer(api_key=plain) as server:
        server.inject(Fault.status(401, headers={f"X-Bad-Key-{plain}": "1"}), on="create")
        async with ba.BananaClient(plain, base_url=server.url) as client:
            with pytest.raises(ba.AuthenticationError) as info:
                await client.create("a cat")
    assert all(plain not in name for name in info.value.headers)


@pytest.mark.parametrize(
    "filler", [180, 190, 4080], ids=["excerpt-cut", "excerpt-cut-2", "body-cut"]
)
async def test_a_key_cut_in_two_by_a_shortened_text_is_redacted(
    keyed_server: FakeBananaServer, clock: FakeClock, filler: int
) -> None:
    # Messages quote 200 characters of the provider's message and errors keep
    # 4096 of the body: a key straddling the cut loses its tail, not its cover.
    message = "x" * filler + KEY + " y" * 100
    keyed_server.inject(Fault.status(400, body=json.dumps({"error": message})), on="create")
    async with client_for(keyed_server, clock) as client:
        with pytest.raises(ba.BadRequestError) as info:
            await client.create("a cat")
    exc = info.value
    for text in (str(exc), exc.body):
        assert KEY[:4] not in text or "[redacted]" in text
        assert KEY[:6] not in text


async def test_the_journal_stores_no_key(
    keyed_server: FakeBananaServer, clock: FakeClock, tmp_path: Path
) -> None:
    escaped = KEY.replace("/", "\\/")
    keyed_server.inject(Fault.status(400, body='{"error": "bad ' + escaped + '"}'), on="create")
    keyed_server.plan(TaskScript(outcome="fail", error=f"{KEY} refused"))
    path = tmp_path / "batch.sqlite"
    async with client_for(keyed_server, clock) as client:
        outcomes = [o async for o in client.generate_many(["a", "b"], concurrency=1, journal=path)]
    assert {type(o.error) for o in outcomes} == {ba.BadRequestError, ba.TaskFailedError}
    with contextlib.closing(sqlite3.connect(path)) as raw:  # every column, as stored
        rows = raw.execute("SELECT * FROM entries").fetchall()
    assert len(rows) == 2
    assert_no_key(str(value) for row in rows for value in row)


@pytest.mark.parametrize("bad", ["\x00", "\x7f", "\x1b", "é", " "])
def test_a_key_that_cannot_travel_in_a_header_is_refused_at_once(bad: str) -> None:
    key = f"sk-abc{bad}def"
    with pytest.raises(ba.InvalidRequestError, match="API key contains") as info:
        ba.BananaClient(key)
    assert key not in str(info.value)
    assert "sk-abc" not in str(info.value)


# -- 2 and 3. a create answer with an id is a task, whatever else it holds ----------


@pytest.mark.parametrize(
    "edit",
    [
        Fault.edit({"code": 0, "msg": "task submitted"}, remove=["status"]),
        Fault.edit({"code": "200", "msg": "ok"}),
        Fault.edit({"created": "yesterday"}),
        Fault.edit({"created": True}),
        Fault.edit({"created": 1e300}),
        Fault.edit({"object": {"type": "image"}, "model": ["x"]}),
    ],
    ids=["code-0", "code-200", "created-yesterday", "created-true", "created-1e300", "shapes"],
)
async def test_a_create_answer_with_an_id_is_a_created_task(
    server: FakeBananaServer, client: ba.BananaClient, edit: Fault
) -> None:
    server.inject(edit, on="create")
    task = await client.create("a cat")
    assert list(server.tasks) == [task.id]
    server.finish(task.id)
    assert (await client.wait(task)).ok
    assert server.count("create") == 1


async def test_an_error_code_beside_an_id_keeps_the_id(
    server: FakeBananaServer, client: ba.BananaClient
) -> None:
    server.inject(Fault.edit({"code": 5001, "msg": "queue full"}, remove=["status"]), on="create")
    with pytest.raises(ba.ProviderError) as info:
        await client.create("a cat")
    assert info.value.task_id == next(iter(server.tasks))
    assert server.count("create") == 1  # never resent: the task may exist


async def test_a_numeric_id_is_kept(server: FakeBananaServer, client: ba.BananaClient) -> None:
    server.plan(TaskScript(task_id="1234567890"))
    server.inject(Fault.edit({"id": 1234567890}), on="create")
    task = await client.create("a cat")
    assert task.id == "1234567890"


async def test_odd_fields_on_a_completed_task_do_not_delay_it(
    server: FakeBananaServer, client: ba.BananaClient
) -> None:
    server.plan(TaskScript(queries=1))
    server.inject(Fault.edit({"created": "yesterday", "object": 7, "model": None}), on="query")
    task = await client.generate("a cat", timeout=60)
    assert task.ok
    assert task.created is None
    assert server.count("query") == 1


@pytest.mark.parametrize(
    "image_url",
    ["http://[::1/x.png", "http://" + "a" * 300 + "/x.png", None, {"href": "x"}, "file:///x"],
    ids=["ipv6", "long-host", "null", "object", "file"],
)
async def test_a_completed_task_without_a_usable_image_url_fails_at_once(
    server: FakeBananaServer, client: ba.BananaClient, image_url: object
) -> None:
    server.plan(TaskScript(queries=1))
    server.inject(Fault.edit({"image_url": image_url}), on="query")
    with pytest.raises(ba.TaskFailedError, match="image URL") as info:
        await client.generate("a cat", timeout=600)
    assert info.value.task.raw_status == "completed"
    assert server.count("query") == 1  # not polled on until the deadline


# -- 4. bad input is that input's error ---------------------------------------------


async def test_a_prompt_with_a_lone_surrogate_is_refused_before_any_request(
    server: FakeBananaServer, client: ba.BananaClient
) -> None:
    with pytest.raises(ba.InvalidRequestError, match="surrogate"):
        await client.generate("bad \ud800")
    with pytest.raises(ba.InvalidRequestError, match="surrogate"):
        await client.create("bad \ud800")
    assert server.requests == []


async def test_a_task_id_with_a_lone_surrogate_is_a_typed_error_with_the_id(
    server: FakeBananaServer, client: ba.BananaClient
) -> None:
    server.plan(TaskScript(task_id="bad\ud800"))
    with pytest.raises(ba.ResponseValidationError, match="surrogate") as info:
        await client.create("a cat")
    assert info.value.task_id == "bad\ud800"
    with pytest.raises(ba.InvalidRequestError, match="surrogate"):
        await client.get("bad\ud800")
    assert server.count("create") == 1


async def test_an_answer_about_another_task_is_not_taken_for_this_one(
    server: FakeBananaServer, client: ba.BananaClient
) -> None:
    task = await client.create("a cat")
    server.finish(task.id)
    server.inject(Fault.edit({"id": "someone-else"}), on="query")
    with pytest.raises(ba.ResponseValidationError, match="someone-else"):
        await client.get(task)
    # while waiting, such an answer is one more transient failure
    server.inject(Fault.edit({"id": "someone-else"}), on="query")
    done = await client.wait(task)
    assert done.id == task.id
    assert done.ok


# -- 7. one deadline covers the create's retries too ------------------------------


async def test_no_create_is_sent_after_the_deadline(
    server: FakeBananaServer, client: ba.BananaClient, clock: FakeClock
) -> None:
    server.inject(Fault.status(429, headers={"Retry-After": "3"}), on="create", times=2)
    with pytest.raises(ba.RateLimitError):
        await client.generate("a cat", timeout=1.0)
    assert server.count("create") == 1
    assert server.tasks == {}
    assert 3.0 not in clock.sleeps  # it did not sleep past its deadline either


async def test_a_create_paused_past_its_deadline_is_not_sent(
    server: FakeBananaServer, client: ba.BananaClient, clock: FakeClock
) -> None:
    # Another request's 429 pauses the whole client for 30 s.
    server.inject(Fault.status(429, headers={"Retry-After": "30"}), on="query", times=4)
    with pytest.raises(ba.RateLimitError):
        await client.get("x")
    with pytest.raises(ba.APITimeoutError, match="not sent") as info:
        await client.generate("a cat", timeout=5.0)
    assert info.value.request_sent is False
    assert server.count("create") == 0


async def test_within_the_deadline_a_429_is_retried(
    server: FakeBananaServer, client: ba.BananaClient, clock: FakeClock
) -> None:
    server.inject(Fault.status(429, headers={"Retry-After": "3"}), on="create", times=2)
    server.plan(TaskScript(queries=1))
    task = await client.generate("a cat", timeout=60.0)
    assert task.ok
    assert server.count("create") == 3


# -- 10. small ones ------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e-320, 1e-9, 0.0009, 1e9, math.inf, math.nan])
async def test_poll_interval_is_bounded_with_a_clear_error(
    client: ba.BananaClient, value: float
) -> None:
    with pytest.raises(ba.InvalidRequestError, match="poll_interval"):
        ba.BananaClient(KEY, poll_interval=value)
    with pytest.raises(ba.InvalidRequestError, match="poll_interval"):
        await client.wait("abc", poll_interval=value)


@pytest.mark.parametrize("value", [1e-320, 1e300, math.inf])
def test_requests_per_second_is_bounded(value: float) -> None:
    with pytest.raises(ba.InvalidRequestError, match="requests_per_second"):
        ba.BananaClient(KEY, requests_per_second=value)


def test_edit_faults_round_trip_as_json() -> None:
    # Sanity of the helper used above: the edit's values are JSON values.
    fault = Fault.edit({"created": 1e300, "id": 5})
    assert json.loads(json.dumps(dict(fault.changes))) == {"created": 1e300, "id": 5}


@pytest.mark.parametrize("task_id", [".", "..", "../../v1/banana/images", "a/b?c#d"])
async def test_no_task_id_changes_the_path_it_is_polled_at(
    server: FakeBananaServer, client: ba.BananaClient, task_id: str
) -> None:
    server.plan(TaskScript(task_id=task_id, queries=1))
    task = await client.generate("a cat")
    assert task.ok
    assert task.id == task_id
    (query,) = [r for r in server.requests if r.kind == "query"]
    assert query.task_id == task_id
    assert query.path.startswith("/v1/result/")
    assert "/" not in query.path.removeprefix("/v1/result/")


async def test_a_create_never_waits_for_a_connection_past_its_deadline(
    server: FakeBananaServer, clock: FakeClock
) -> None:
    # The only connection is held by a stalled query (real seconds; the
    # deadline is on the virtual clock, which the stall does not move, so the
    # slot wait is bounded by a real-time deadline here: timeout= is small).
    server.inject(Fault.stall(3.0), on="query")
    async with ba.BananaClient(
        API_KEY, base_url=server.url, connection_limit=1, max_retries=0
    ) as client:
        held = asyncio.create_task(client.get("missing"))
        await asyncio.sleep(0.05)
        with pytest.raises(ba.APITimeoutError, match="no connection was free") as info:
            await client.generate("a cat", timeout=0.3)
        assert info.value.request_sent is False
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
    assert server.count("create") == 0


async def test_slow_image_downloads_never_hold_up_the_api(
    server: FakeBananaServer, tmp_path: Path
) -> None:
    # Two connections; two downloads stall on the image host. Creates and
    # polls still go out at once: images travel on connections of their own.
    server.plan(TaskScript(duration=0.0), TaskScript(duration=0.0))
    async with ba.BananaClient(
        API_KEY, base_url=server.url, connection_limit=2, poll_interval=0.01
    ) as client:
        done = [await client.generate(f"cat {i}") for i in range(2)]
        server.inject(Fault.stall(2.0), on="image", times=2)
        downloads = [asyncio.create_task(client.download(t, tmp_path)) for t in done]
        await asyncio.sleep(0.1)
        server.plan(TaskScript(queries=1))
        async with asyncio.timeout(1.0):  # long before the stalls end
            assert (await client.generate("a dog")).ok
        paths = await asyncio.gather(*downloads)
    assert all(p.exists() for p in paths)


@pytest.mark.parametrize("key", [b"sk-bytes", 12345, ["sk"]], ids=["bytes", "int", "list"])
def test_a_key_that_is_not_text_is_refused_clearly(key: object) -> None:
    with pytest.raises(ba.InvalidRequestError, match="must be a str"):
        ba.BananaClient(key)  # type: ignore[arg-type]


def test_a_long_key_is_accepted() -> None:
    ba.BananaClient("eyJ" + "x" * 997, base_url="http://127.0.0.1:1")


async def test_a_key_cut_by_aiohttp_in_a_bad_response_line_is_redacted() -> None:
    # aiohttp quotes an over-long header line in its error, cut with "...":
    # the piece of the key before that cut must not survive either.
    key = "sk-live-0123456789abcdef0123456789abcdef"
    raw = b"HTTP/1.1 200 OK\r\nX-Echo: " + b"a" * 72 + key.encode() + b"b" * 9000
    raw += b"\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with ba.BananaClient(key, base_url=f"http://127.0.0.1:{port}", max_retries=0) as c:
            with pytest.raises(ba.BananaError) as info:
                await c.create("a cat")
    assert key[:6] not in str(info.value)
