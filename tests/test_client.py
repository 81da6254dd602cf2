"""BananaClient over real loopback HTTP: end to end, lifecycle, the API key."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, FakeClock, Fault, TaskScript

from .conftest import API_KEY

CREATE_PATHS = {"nano": "/v1/banana/images", "navo": "/v1/image/banana/"}


async def test_generate_end_to_end(
    client: ba.BananaClient, server: FakeBananaServer, dialect: str
) -> None:
    server.plan(TaskScript(duration=5.0))
    task = await client.generate("a cat on a windowsill", size="16:9")

    assert task.ok
    assert task.done
    assert task.status is ba.TaskStatus.COMPLETED
    assert task.raw_status == "completed"
    assert task.image_url == server.image_url(task.id)
    assert task.error is None
    assert isinstance(task.created, datetime)
    assert task.created.tzinfo is UTC
    assert task.object == "image.generation"
    # navo echoes a display name for the model; nano echoes the model asked for.
    assert task.model == ("NanoBanana2" if dialect == "navo" else "nano-banana-2")

    create = server.requests[0]
    assert create.kind == "create"
    assert create.method == "POST"
    assert create.path == CREATE_PATHS[dialect]
    assert create.json == {
        "prompt": "a cat on a windowsill",
        "model": "nano-banana-2",
        "size": "16:9",
        "image_urls": [],
    }
    assert all(r.authorization == f"Bearer {API_KEY}" for r in server.requests)
    assert {r.kind for r in server.requests} == {"create", "query"}
    assert server.count("create") == 1


async def test_create_get_wait(client: ba.BananaClient, server: FakeBananaServer) -> None:
    created = await client.create(
        "a cat",
        model=ba.Model.NANO_BANANA_PRO,
        resolution="4K",
        image_urls=["https://x.test/a.png"],
    )
    assert created.status is ba.TaskStatus.QUEUED
    assert server.requests[0].json == {
        "prompt": "a cat",
        "model": "nano-banana-pro",
        "resolution": "4k",
        "image_urls": ["https://x.test/a.png"],
    }

    seen = await client.get(created.id)
    assert seen.id == created.id
    assert seen.status is ba.TaskStatus.PROCESSING
    assert not seen.done

    server.finish(created.id)
    done = await client.wait(seen)
    assert done.ok
    assert done.image_url == server.image_url(created.id)


async def test_create_accepts_a_request_object(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    request = ba.GenerationRequest("a dog", size=ba.AspectRatio.R9_16)
    await client.create(request)
    assert server.requests[-1].json["size"] == "9:16"
    with pytest.raises(ba.InvalidRequestError, match="not both"):
        await client.create(request, size="1:1")
    assert server.count("create") == 1


async def test_failed_task_raises_with_the_task(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.plan(TaskScript(duration=3.0, outcome="fail", error="content policy violation"))
    with pytest.raises(ba.TaskFailedError) as info:
        await client.generate("something forbidden")
    assert info.value.error == "content policy violation"
    assert info.value.task.status is ba.TaskStatus.FAILED
    assert "content policy violation" in str(info.value)


async def test_separate_create_and_query_hosts(clock: FakeClock) -> None:
    # navo creates on one host and queries on another.
    async with (
        FakeBananaServer(api_key=API_KEY, duration=0.0, clock=clock.time) as creator,
        FakeBananaServer(api_key=API_KEY, duration=0.0, clock=clock.time) as querier,
        ba.BananaClient(
            API_KEY,
            dialect="navo",
            create_base_url=creator.url,
            query_base_url=querier.url,
            clock=clock,
        ) as client,
    ):
        task = await client.create("a cat")
        # The query server has no such task: proof that the query went there.
        with pytest.raises(ba.NotFoundError):
            await client.get(task.id)
        assert creator.count("create") == 1
        assert creator.count("query") == 0
        assert querier.count("create") == 0
        assert querier.count("query") == 1


async def test_base_url_with_a_path_prefix(clock: FakeClock) -> None:
    async with FakeBananaServer(api_key=API_KEY, clock=clock.time) as server:
        async with ba.BananaClient(API_KEY, base_url=server.url + "/prefix/", clock=clock) as c:
            with pytest.raises(ba.NotFoundError):
                await c.create("a cat")
        assert server.requests[0].path == "/prefix/v1/banana/images"


async def test_task_ids_are_url_quoted(client: ba.BananaClient, server: FakeBananaServer) -> None:
    odd = "a/b c?d%e"
    server.plan(TaskScript(task_id=odd, duration=0.0))
    task = await client.create("a cat")
    assert task.id == odd
    got = await client.get(task)
    assert got.id == odd
    assert got.ok
    query = server.requests[-1]
    assert query.path == "/v1/result/a%2Fb%20c%3Fd%25e"
    assert query.task_id == odd


async def test_unknown_task_is_not_found(client: ba.BananaClient, server: FakeBananaServer) -> None:
    with pytest.raises(ba.NotFoundError) as info:
        await client.get("nope")
    assert info.value.status_code == 404
    assert "task not found" in str(info.value)
    assert server.count("query") == 1  # a 404 is not retried


# -- validation happens before any HTTP -----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "size": "7:3"}, "size"),
        ({"prompt": "x", "resolution": "8k"}, "resolution"),
        ({"prompt": "x", "image_urls": ["file:///etc/passwd"]}, "http"),
        ({"prompt": "x", "image_urls": "https://x.test/a.png"}, "list"),
        ({"prompt": "x", "model": "dall-e-3"}, "allow_unknown_models"),
    ],
)
async def test_invalid_input_sends_nothing(
    client: ba.BananaClient, server: FakeBananaServer, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ba.InvalidRequestError, match=match):
        await client.create(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        await client.generate(**kwargs)  # type: ignore[arg-type]
    assert server.requests == []


async def test_reference_image_limit_is_per_dialect(
    client: ba.BananaClient, server: FakeBananaServer, dialect: str
) -> None:
    urls = [f"https://x.test/{i}.png" for i in range(7)]
    if dialect == "nano":
        with pytest.raises(ba.InvalidRequestError, match="at most 6"):
            await client.create("x", image_urls=urls)
        assert server.requests == []
        await client.create("x", image_urls=urls[:6])
    else:
        await client.create("x", image_urls=urls)
    assert server.count("create") == 1


async def test_unknown_model_opt_out(server: FakeBananaServer, clock: FakeClock) -> None:
    async with ba.BananaClient(
        API_KEY, base_url=server.url, clock=clock, allow_unknown_models=True
    ) as client:
        await client.create("x", model="nano-banana-3")
    assert server.requests[0].json["model"] == "nano-banana-3"


async def test_ignored_resolution_warns_but_sends(
    client: ba.BananaClient, server: FakeBananaServer, dialect: str
) -> None:
    model = "nano-banana-fast" if dialect == "navo" else "nano-banana-2"
    with pytest.warns(ba.ResolutionIgnoredWarning, match="ignores resolution"):
        await client.create("x", model=model, resolution="4k")
    assert server.count("create") == 1


# -- lifecycle -------------------------------------------------------------------


async def test_owned_session_is_closed_and_borrowed_one_is_not(server: FakeBananaServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with ba.BananaClient(API_KEY, base_url=server.url, session=session) as client:
            server.plan(TaskScript(duration=0.0))
            task = await client.create("x")
            assert (await client.get(task)).ok
        assert not session.closed
        # Still usable by its owner after the client is gone.
        async with session.get(server.image_url(task.id)) as response:
            assert response.status == 200

    owned = ba.BananaClient(API_KEY, base_url=server.url)
    async with owned:
        inner = owned._session
        assert inner is not None
        assert not inner.closed
    assert inner.closed


async def test_use_outside_async_with_is_a_clear_error(server: FakeBananaServer) -> None:
    client = ba.BananaClient(API_KEY, base_url=server.url)
    with pytest.raises(RuntimeError, match="async with"):
        await client.get("abc")
    async with client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.get("abc")
    with pytest.raises(RuntimeError, match="closed"):
        await client.__aenter__()
    await client.aclose()  # idempotent
    assert server.requests == []


async def test_other_event_loop_is_refused(server: FakeBananaServer) -> None:
    errors: list[BaseException] = []
    async with ba.BananaClient(API_KEY, base_url=server.url) as client:

        def use_from_another_loop() -> None:
            try:
                asyncio.run(client.get("abc"))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=use_from_another_loop)
        thread.start()
        await asyncio.to_thread(thread.join)
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "another" in str(errors[0])
    assert server.requests == []


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANANA_API_KEY", "env-key-123")
    client = ba.BananaClient(base_url="http://127.0.0.1:9")
    assert client._auth_headers["Authorization"] == "Bearer env-key-123"
    monkeypatch.delenv("BANANA_API_KEY")
    with pytest.raises(ba.InvalidRequestError, match="BANANA_API_KEY"):
        ba.BananaClient()
    with pytest.raises(ba.InvalidRequestError, match="BANANA_API_KEY"):
        ba.BananaClient(api_key="  ")


def test_key_only_over_tls_or_loopback() -> None:
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        ba.BananaClient(API_KEY, base_url=url)
    ba.BananaClient(API_KEY, base_url="https://proxy.example.com/api")
    with pytest.raises(ba.InvalidRequestError, match="TLS"):
        ba.BananaClient(API_KEY, base_url="http://proxy.example.com")
    with pytest.raises(ba.InvalidRequestError, match="TLS"):
        ba.BananaClient(API_KEY, query_base_url="http://10.0.0.8")
    with pytest.raises(ba.InvalidRequestError, match="http"):
        ba.BananaClient(API_KEY, base_url="ftp://example.com")


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ba.InvalidRequestError, match="dialect"):
        ba.BananaClient(API_KEY, dialect="klingon")
    with pytest.raises(ValueError, match="poll_interval"):
        ba.BananaClient(API_KEY, poll_interval=0)
    with pytest.raises(ValueError, match="max_retries"):
        ba.BananaClient(API_KEY, max_retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        ba.BananaClient(API_KEY, timeout=-1)


async def test_key_never_in_repr_logs_or_errors(
    server: FakeBananaServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="banana_async")
    # A provider that echoes the key back in an error body.
    server.inject(Fault.status(401, body=json.dumps({"error": f"bad key {API_KEY}"})), on="create")
    server.inject(
        Fault.body(f"<html><title>{API_KEY}</title></html>", status=502), on="query", times=9
    )
    async with ba.BananaClient(API_KEY, base_url=server.url, clock=clock, max_retries=2) as client:
        assert API_KEY not in repr(client)
        with pytest.raises(ba.AuthenticationError) as auth:
            await client.create("x")
        with pytest.raises(ba.ServerError) as server_error:
            await client.get("abc")
    for exc in (auth.value, server_error.value):
        assert API_KEY not in str(exc)
        assert API_KEY not in repr(exc.args)
        assert API_KEY not in exc.body
        assert "[redacted]" in exc.body
    assert caplog.records  # the client did log its requests and retries
    assert API_KEY not in caplog.text


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"base_url": "http://example.com"}, "base_url 'http://example.com'"),
        ({"create_base_url": "http://example.com"}, "create_base_url 'http://example.com'"),
        (
            {"base_url": "https://example.com", "query_base_url": "http://example.org"},
            "query_base_url 'http://example.org'",
        ),
    ],
)
def test_a_plain_http_url_is_refused_by_the_name_it_was_given(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ba.InvalidRequestError) as caught:
        ba.BananaClient("sk-0123456789", **options)
    assert str(caught.value).startswith(named)
    assert "plain HTTP" in str(caught.value)
