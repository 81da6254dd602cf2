"""Tests of the fake provider itself, over real loopback HTTP with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import zlib
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
from yarl import URL

from banana_async._png import PNG_SIGNATURE, make_png
from banana_async.testing import FakeBananaServer, FakeTask, Fault, RecordedRequest, TaskScript

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
NANO = "/v1/banana/images"
NAVO = "/v1/image/banana/"
BODY: dict[str, Any] = {
    "model": "nano-banana-2",
    "prompt": "A cute orange cat sitting on a windowsill",
    "resolution": "2k",
    "size": "16:9",
    "image_urls": [],
}
ID_RE = re.compile(r"^[0-9a-f]{12}$")


class FakeClock:
    """A manually advanced clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=KEY, duration=10.0, clock=clock) as srv:
        yield srv


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as sess:
        yield sess


async def create(
    session: aiohttp.ClientSession,
    server: FakeBananaServer,
    path: str = NANO,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    async with session.post(server.url + path, json=BODY if body is None else body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def query(
    session: aiohttp.ClientSession, server: FakeBananaServer, task_id: str
) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{server.url}/v1/result/{task_id}") as resp:
        data: dict[str, Any] = await resp.json(content_type=None)
        return resp.status, data


# -- PNG -------------------------------------------------------------------------


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """Check structure and CRCs; return width, height and the decompressed IDAT data."""
    assert data.startswith(PNG_SIGNATURE)
    pos = len(PNG_SIGNATURE)
    chunks: list[tuple[bytes, bytes]] = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        chunks.append((kind, payload))
        pos += 12 + length
    assert pos == len(data)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    idat = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    return width, height, idat


@pytest.mark.parametrize(("width", "height"), [(1, 1), (64, 64), (17, 5)])
def test_png_is_valid(width: int, height: int) -> None:
    data = make_png(width, height, (10, 200, 30))
    w, h, raw = parse_png(data)
    assert (w, h) == (width, height)
    assert len(raw) == height * (1 + 3 * width)
    row = b"\x00" + bytes((10, 200, 30)) * width
    assert raw == row * height


def test_png_is_cached_and_validates_arguments() -> None:
    assert make_png(3, 3, (1, 2, 3)) is make_png(3, 3, (1, 2, 3))
    with pytest.raises(ValueError, match="dimensions"):
        make_png(0, 3, (1, 2, 3))
    with pytest.raises(ValueError, match="rgb"):
        make_png(3, 3, (1, 256, 3))


# -- lifecycle ----------------------------------------------------------------------


async def test_lifecycle_and_url() -> None:
    srv = FakeBananaServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.url
    await srv.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", srv.url)
        assert srv.port > 0
        assert srv.url.endswith(f":{srv.port}")
        with pytest.raises(RuntimeError, match="already started"):
            await srv.start()
    finally:
        await srv.close()
    await srv.close()  # idempotent
    async with aiohttp.ClientSession() as sess:
        with pytest.raises(aiohttp.ClientConnectionError):
            await sess.get(srv.url + "/v1/result/x")


async def test_no_api_key_accepts_anything() -> None:
    async with FakeBananaServer() as srv, aiohttp.ClientSession() as sess:
        data = await create(sess, srv)
        status, result = await query(sess, srv, data["id"])
    assert status == 200
    assert result["status"] == "completed"
    assert srv.requests[0].authorization is None


# -- dialects -------------------------------------------------------------------


async def test_nano_create_response_shape(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    data = await create(session, server, NANO, {**BODY, "model": "nano-banana-pro-stable"})
    assert set(data) == {"id", "object", "created", "model", "status"}
    assert ID_RE.match(data["id"])
    assert data["object"] == "image"
    assert data["model"] == "nano-banana-pro-stable"
    assert data["status"] == "queued"
    assert isinstance(data["created"], int)
    assert data["created"] == server.tasks[data["id"]].created_unix
    assert server.tasks[data["id"]].dialect == "nano"


@pytest.mark.parametrize("path", [NAVO, NAVO.rstrip("/")])
async def test_navo_create_response_shape(
    server: FakeBananaServer, session: aiohttp.ClientSession, path: str
) -> None:
    data = await create(session, server, path)
    assert set(data) == {"id", "object", "created", "model", "status"}
    assert ID_RE.match(data["id"])
    assert data["object"] == "navobanana"
    assert data["model"] == "navobanana"
    assert data["status"] == "queued"
    assert server.tasks[data["id"]].dialect == "navo"
    assert server.requests[-1].dialect == "navo"


@pytest.mark.parametrize(
    ("model", "nano_echo", "navo_echo"),
    [
        ("nano-banana-2", "nano-banana-2", "NanoBanana2"),
        ("nano-banana-pro", "nano-banana-pro", "NanoBananaPro"),
        ("nano-banana-fast", "nano-banana-fast", "NanoBananaFast"),
        ("future-model-9", "future-model-9", "future-model-9"),
    ],
)
async def test_query_shape_and_model_echo(
    server: FakeBananaServer,
    session: aiohttp.ClientSession,
    model: str,
    nano_echo: str,
    navo_echo: str,
) -> None:
    nano = await create(session, server, NANO, {**BODY, "model": model})
    navo = await create(session, server, NAVO, {**BODY, "model": model})
    for created, echo in ((nano, nano_echo), (navo, navo_echo)):
        status, data = await query(session, server, created["id"])
        assert status == 200
        assert data == {
            "id": created["id"],
            "object": "image.generation",
            "created": created["created"],
            "model": echo,
            "status": "processing",
            "image_url": None,
            "error": None,
        }


async def test_ids_are_unique(server: FakeBananaServer, session: aiohttp.ClientSession) -> None:
    ids = {(await create(session, server))["id"] for _ in range(20)}
    assert len(ids) == 20
    assert all(ID_RE.match(i) for i in ids)


# -- progression and outcomes ----------------------------------------------------------


async def test_progression_with_fake_clock(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    created = await create(session, server)
    task_id = created["id"]
    assert created["status"] == "queued"
    image_url = f"{server.url}/images/{task_id}.png"

    clock.advance(9.9)
    assert (await query(session, server, task_id))[1]["status"] == "processing"
    async with session.get(image_url) as resp:
        assert resp.status == 404

    clock.advance(0.1)
    status, data = await query(session, server, task_id)
    assert status == 200
    assert data["status"] == "completed"
    assert data["image_url"] == image_url
    assert data["error"] is None

    async with aiohttp.ClientSession() as anonymous, anonymous.get(image_url) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
        png = await resp.read()
    width, height, _ = parse_png(png)
    assert (width, height) == server.image_size
    # The colour is derived deterministically from the id.
    async with session.get(image_url) as resp:
        assert await resp.read() == png
    assert server.requests[-2].kind == "image"
    assert server.requests[-2].authorization is None
    assert server.requests[-1].authorization == AUTH["Authorization"]


async def test_image_size_option(clock: FakeClock) -> None:
    async with (
        FakeBananaServer(image_size=(7, 3), clock=clock) as srv,
        aiohttp.ClientSession() as sess,
    ):
        task_id = (await create(sess, srv))["id"]
        async with sess.get(srv.image_url(task_id)) as resp:
            width, height, _ = parse_png(await resp.read())
    assert (width, height) == (7, 3)


async def test_fail_outcome(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.plan(TaskScript(duration=1.0, outcome="fail", error="content policy violation"))
    task_id = (await create(session, server))["id"]
    assert (await query(session, server, task_id))[1]["status"] == "processing"
    clock.advance(1.0)
    status, data = await query(session, server, task_id)
    assert status == 200
    assert data["status"] == "failed"
    assert data["error"] == "content policy violation"
    assert data["image_url"] is None
    async with session.get(server.image_url(task_id)) as resp:
        assert resp.status == 404


async def test_manual_finish_and_fail(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.duration = None
    first = (await create(session, server))["id"]
    second = (await create(session, server))["id"]
    clock.advance(1e6)
    assert (await query(session, server, first))[1]["status"] == "processing"
    server.finish(first)
    server.fail(second, message="out of credits")
    assert (await query(session, server, first))[1]["status"] == "completed"
    _, data = await query(session, server, second)
    assert (data["status"], data["error"]) == ("failed", "out of credits")
    with pytest.raises(ValueError, match="already completed"):
        server.fail(first)
    with pytest.raises(KeyError):
        server.finish("nope")
    task = server.tasks[second]
    assert isinstance(task, FakeTask)
    assert task.finished_at == clock.now
    assert task.status(clock.now) == "failed"


async def test_status_words(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    words = {"queued": "submitted", "processing": "running", "completed": "SUCCEEDED"}
    server.plan(TaskScript(duration=5.0, status_words=words))
    created = await create(session, server)
    assert created["status"] == "submitted"
    assert (await query(session, server, created["id"]))[1]["status"] == "running"
    clock.advance(5.0)
    _, data = await query(session, server, created["id"])
    assert data["status"] == "SUCCEEDED"
    assert data["image_url"] == server.image_url(created["id"])


async def test_plan_then_script_for_then_default(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    seen: list[dict[str, Any]] = []

    def script_for(body: dict[str, Any]) -> TaskScript | None:
        seen.append(body)
        if body["prompt"] == "fail me":
            return TaskScript(duration=0.0, outcome="fail", error="by hook")
        return None

    server.script_for = script_for
    server.plan(TaskScript(duration=0.0, error="planned"), TaskScript(duration=None))
    planned_done = (await create(session, server, body={**BODY, "prompt": "fail me"}))["id"]
    planned_stuck = (await create(session, server))["id"]
    hooked = (await create(session, server, body={**BODY, "prompt": "fail me"}))["id"]
    default = (await create(session, server))["id"]

    assert [b["prompt"] for b in seen] == ["fail me", BODY["prompt"]]  # plans skip the hook
    assert server.tasks[planned_done].script.error == "planned"
    assert server.tasks[planned_stuck].script.duration is None
    assert server.tasks[default].script == TaskScript(duration=10.0)
    clock.advance(10.0)
    statuses = [
        (await query(session, server, i))[1]["status"]
        for i in (planned_done, planned_stuck, hooked, default)
    ]
    assert statuses == ["completed", "processing", "failed", "completed"]
    assert (await query(session, server, hooked))[1]["error"] == "by hook"


# -- validation, auth and 404s --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        [],
        "just a string",
        {"model": "nano-banana-2"},
        {"model": "nano-banana-2", "prompt": ""},
        {"model": "nano-banana-2", "prompt": 5},
        {"prompt": "a cat"},
        {"prompt": "a cat", "model": 2},
        {"prompt": "a cat", "model": "m", "size": 16},
        {"prompt": "a cat", "model": "m", "resolution": ["2k"]},
        {"prompt": "a cat", "model": "m", "image_urls": "http://x/y.png"},
        {"prompt": "a cat", "model": "m", "image_urls": [1]},
    ],
)
async def test_invalid_create_is_400(
    server: FakeBananaServer, session: aiohttp.ClientSession, body: Any
) -> None:
    async with session.post(server.url + NANO, json=body) as resp:
        assert resp.status == 400
        data = await resp.json()
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["message"]
    assert server.tasks == {}
    assert server.requests[-1].task_id is None


async def test_non_json_create_is_400(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    async with session.post(server.url + NAVO, data=b"{not json") as resp:
        assert resp.status == 400
    assert server.requests[-1].json is None
    assert server.requests[-1].body == b"{not json"


async def test_optional_fields_are_optional(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    body = {"model": "nano-banana", "prompt": "a cat", "image_urls": ["http://x/a.png"], "x": 1}
    task_id = (await create(session, server, NANO, body))["id"]
    assert server.tasks[task_id].body == body


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
async def test_auth_is_checked(server: FakeBananaServer, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession(headers=headers) as sess:
        for method, path in (("POST", NANO), ("POST", NAVO), ("GET", "/v1/result/abc")):
            async with sess.request(method, server.url + path, json=BODY) as resp:
                assert resp.status == 401
                data = await resp.json()
            assert data == {"error": {"message": "invalid api key", "type": "authentication_error"}}
    assert server.tasks == {}
    assert server.count() == 3


async def test_not_found(server: FakeBananaServer, session: aiohttp.ClientSession) -> None:
    status, data = await query(session, server, "abc123def456")
    assert status == 404
    assert data == {"error": {"message": "task not found", "type": "not_found"}}
    async with session.get(f"{server.url}/images/abc123def456.png") as resp:
        assert resp.status == 404
    async with session.get(f"{server.url}/nowhere") as resp:
        assert resp.status == 404
    async with session.get(server.url + NANO) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
    assert [r.kind for r in server.requests] == ["query", "image", "other", "other"]


async def test_url_quoted_ids(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    odd = "a b/c?d%e"
    server.plan(TaskScript(task_id=odd))
    assert (await create(session, server))["id"] == odd
    quoted = "a%20b%2Fc%3Fd%25e"
    clock.advance(10.0)
    async with session.get(URL(f"{server.url}/v1/result/{quoted}", encoded=True)) as r:
        assert r.status == 200
        data = await r.json()
    assert data["id"] == odd
    assert data["image_url"] == f"{server.url}/images/{quoted}.png"
    async with session.get(URL(data["image_url"], encoded=True)) as r:
        assert r.status == 200
        parse_png(await r.read())
    assert server.requests[-2].path == f"/v1/result/{quoted}"
    assert server.requests[-2].task_id == odd
    assert server.requests[-1].task_id == odd
    # The same id may not be planned twice.
    server.plan(TaskScript(task_id=odd))
    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 409


# -- recording ---------------------------------------------------------------------


async def test_requests_are_recorded(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    task_id = (await create(session, server, NAVO))["id"]
    clock.advance(3.0)
    await query(session, server, task_id)
    async with session.get(server.url + "/v1/result/zzz?x=1") as resp:
        assert resp.status == 404

    first, second, third = server.requests
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path, first.kind, first.dialect) == ("POST", NAVO, "create", "navo")
    assert first.task_id == task_id
    assert first.json == BODY
    assert json.loads(first.body) == BODY
    assert first.headers["authorization"] == AUTH["Authorization"]  # case-insensitive copy
    assert first.at == 1000.0
    assert (second.kind, second.dialect, second.task_id, second.at) == (
        "query",
        None,
        task_id,
        1003.0,
    )
    assert (third.path, third.task_id, third.body, third.json) == (
        "/v1/result/zzz?x=1",
        "zzz",
        b"",
        None,
    )
    assert server.count() == 3
    assert server.count("create") == 1
    assert server.count("query") == 2
    assert server.count("image") == 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.kind = "other"  # type: ignore[misc]


async def test_many_concurrent_tasks(clock: FakeClock) -> None:
    connector = aiohttp.TCPConnector(limit=50)
    async with (
        FakeBananaServer(duration=1.0, clock=clock) as srv,
        aiohttp.ClientSession(connector=connector) as sess,
    ):
        created = await asyncio.gather(*(create(sess, srv) for _ in range(1000)))
        assert len({c["id"] for c in created}) == 1000
        assert len(srv.tasks) == 1000
        clock.advance(1.0)
        results = await asyncio.gather(*(query(sess, srv, c["id"]) for c in created[:200]))
    assert all(r == (200, r[1]) and r[1]["status"] == "completed" for r in results)


# -- faults ------------------------------------------------------------------------


@pytest.mark.parametrize("process", [False, True])
async def test_fault_status_on_create(
    server: FakeBananaServer, session: aiohttp.ClientSession, process: bool
) -> None:
    server.inject(Fault.status(500, process=process), on="create")
    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 500
        data = await resp.json()
    assert data["error"]["message"] == "injected HTTP 500"
    assert len(server.tasks) == (1 if process else 0)
    record = server.requests[-1]
    assert record.kind == "create"
    assert record.task_id == (next(iter(server.tasks)) if process else None)
    # Consumed: the next create succeeds.
    await create(session, server)
    assert len(server.tasks) == (2 if process else 1)


async def test_fault_status_with_headers_and_body(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    fault = Fault.status(
        429, body="slow down", headers={"Retry-After": "3"}, content_type="text/plain"
    )
    server.inject(fault, on="query")
    async with session.get(server.url + "/v1/result/abc") as resp:
        assert resp.headers["Retry-After"] == "3"
        assert resp.content_type == "text/plain"
        assert await resp.text() == "slow down"
    status, data = await query(session, server, "abc")
    assert (status, data["error"]["type"]) == (404, "not_found")


async def test_fault_status_default_body_names_the_error_type(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.status(429), on="any")
    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["type"] == "rate_limit_error"
    with pytest.raises(ValueError, match="status code"):
        Fault.status(42)


@pytest.mark.parametrize("process", [False, True])
async def test_fault_reset_on_create(
    server: FakeBananaServer, session: aiohttp.ClientSession, process: bool
) -> None:
    server.inject(Fault.reset(process=process), on="create")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await session.post(server.url + NANO, json=BODY)
    assert server.count("create") == 1  # POST is not retried by aiohttp
    assert len(server.tasks) == (1 if process else 0)
    await create(session, server)
    assert len(server.tasks) == (2 if process else 1)


async def test_fault_reset_on_query(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    task_id = (await create(session, server))["id"]
    # aiohttp retries an idempotent request once after a disconnect.
    server.inject(Fault.reset(), on="query", times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await query(session, server, task_id)
    assert server.count("query") == 2
    assert server.pending_faults == 0
    clock.advance(10.0)
    assert (await query(session, server, task_id))[1]["status"] == "completed"


@pytest.mark.parametrize("process", [False, True])
async def test_fault_stall_on_create(
    server: FakeBananaServer, session: aiohttp.ClientSession, process: bool
) -> None:
    server.inject(Fault.stall(30.0, process=process), on="create")
    with pytest.raises(asyncio.TimeoutError):
        await session.post(server.url + NANO, json=BODY, timeout=aiohttp.ClientTimeout(total=0.2))
    assert server.count("create") == 1
    assert len(server.tasks) == (1 if process else 0)
    # The server still closes promptly with a stalled request in flight (see fixture teardown).


async def test_fault_stall_then_answers(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    task_id = (await create(session, server))["id"]
    server.inject(Fault.stall(0.05), on="query")
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, data = await query(session, server, task_id)
    assert loop.time() - started >= 0.05
    assert (status, data["status"]) == (200, "processing")


async def test_server_closes_promptly_with_stalled_request() -> None:
    srv = FakeBananaServer()
    await srv.start()
    srv.inject(Fault.stall(60.0), on="create")
    async with aiohttp.ClientSession() as sess:

        async def post() -> int:
            async with sess.post(srv.url + NANO, json=BODY) as resp:
                return resp.status

        pending = asyncio.create_task(post())
        while srv.count() == 0:  # noqa: ASYNC110 - polling the fake is the point here
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await srv.close()
        assert loop.time() - started < 5.0
        with pytest.raises(aiohttp.ClientError):
            await pending
    assert srv.tasks == {}  # aborted stalls do not process


async def test_fault_body_variants(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.body('{"code": "204", "msg": "login verification failed"}'), on="create")
    server.inject(Fault.body(b"{truncated", status=200), on="create")
    server.inject(Fault.html(), on="create")
    server.inject(Fault.html(503), on="create")

    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 200
        assert await resp.json() == {"code": "204", "msg": "login verification failed"}
    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.read() == b"{truncated"
    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        assert "502 Bad Gateway" in await resp.text()
    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 503
        assert "503 Service Unavailable" in await resp.text()
    assert server.tasks == {}
    assert server.count("create") == 4


async def test_fault_status_word(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    task_id = (await create(session, server))["id"]
    clock.advance(10.0)
    server.inject(Fault.status_word("weird-state"), on="query")
    _, data = await query(session, server, task_id)
    assert data["status"] == "weird-state"
    assert data["image_url"] == server.image_url(task_id)  # otherwise a normal answer
    assert (await query(session, server, task_id))[1]["status"] == "completed"
    with pytest.raises(ValueError, match="queries"):
        server.inject(Fault.status_word("x"), on="create")


async def test_faults_fifo_per_kind_and_times(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.status(503), on="query", times=2)
    server.inject(Fault.status(502), on="any")
    server.inject(Fault.status(504), on="query")
    assert server.pending_faults == 4
    async with session.get(server.url + "/nowhere") as resp:  # "other" consumes nothing
        assert resp.status == 404
    async with session.post(server.url + NANO, json=BODY) as resp:  # first match for a create
        assert resp.status == 502
    codes = [(await query(session, server, "x"))[0] for _ in range(4)]
    assert codes == [503, 503, 504, 404]
    assert server.pending_faults == 0
    with pytest.raises(ValueError, match="times"):
        server.inject(Fault.reset(), on="query", times=0)


async def test_fault_on_image(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    task_id = (await create(session, server))["id"]
    clock.advance(10.0)
    server.inject(Fault.status(403), on="image")
    async with session.get(server.image_url(task_id)) as resp:
        assert resp.status == 403
    async with session.get(server.image_url(task_id)) as resp:
        assert resp.status == 200
    assert server.count("image") == 2


def test_scripts_are_frozen_and_validated() -> None:
    script = TaskScript(status_words={"completed": "done"})
    assert hash(script) == hash(TaskScript(status_words={"completed": "done"}))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        script.duration = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        script.status_words["failed"] = "x"  # type: ignore[index]
    with pytest.raises(ValueError, match="duration"):
        TaskScript(duration=-1.0)
    with pytest.raises(ValueError, match="outcome"):
        TaskScript(outcome="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds"):
        Fault.stall(-1.0)


async def test_fault_edit_changes_a_real_answer(
    server: FakeBananaServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.inject(Fault.edit({"code": 0, "msg": "task submitted"}, remove=["status"]), on="create")
    data = await create(session, server)
    assert set(data) == {"id", "object", "created", "model", "code", "msg"}
    assert list(server.tasks) == [data["id"]]  # the task was created all the same
    clock.advance(10.0)
    server.inject(Fault.edit({"image_url": "http://[::1/x.png", "id": "other"}), on="query")
    status, answer = await query(session, server, data["id"])
    assert status == 200
    assert answer["image_url"] == "http://[::1/x.png"
    assert answer["id"] == "other"
    assert answer["status"] == "completed"
    # error answers pass unchanged
    server.inject(Fault.edit({"id": "x"}), on="query")
    status, answer = await query(session, server, "missing")
    assert status == 404
    assert "id" not in answer
    with pytest.raises(ValueError, match="JSON answers"):
        server.inject(Fault.edit({}), on="image")


async def test_fault_gzip_bomb_is_small_on_the_wire(
    server: FakeBananaServer, session: aiohttp.ClientSession
) -> None:
    fault = Fault.gzip_bomb(8 * 1024 * 1024)
    assert len(fault.payload) < 64 * 1024
    server.inject(fault, on="create")
    async with session.post(server.url + NANO, json=BODY) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert int(resp.headers["Content-Length"]) == len(fault.payload)
        body = await resp.read()
    assert body == bytes(8 * 1024 * 1024)
    with pytest.raises(ValueError, match="expanded_bytes"):
        Fault.gzip_bomb(-1)


def test_gzip_bomb_can_claim_any_type() -> None:
    assert Fault.gzip_bomb(10, content_type="image/png").content_type == "image/png"
