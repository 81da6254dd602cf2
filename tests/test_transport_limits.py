"""_transport's limits over real loopback HTTP: decoded-size caps and URLs sent as given."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

import banana_async as ba
from banana_async import _transport
from banana_async._png import make_png
from banana_async.dialects import HTTPRequest
from banana_async.testing import FakeBananaServer, Fault

from .conftest import API_KEY

T = TypeVar("T")

BOMB_BYTES = 200 * 2**20
"""What the gzip bombs expand to: 200 MiB of zeros from about 200 KB on the wire."""

PEAK_LIMIT = 32 * 2**20
"""Python allocations a refused bomb may cost: far below the 200 MiB it expands to."""


async def peak_memory(call: Callable[[], Awaitable[T]]) -> tuple[T | BaseException, int]:
    """Run ``call`` under tracemalloc; return its result (or exception) and the peak.

    tracemalloc counts every allocation made through Python's allocators,
    zlib's output buffers included: a deterministic measure, not a timing.
    """
    tracemalloc.start()
    try:
        try:
            result: T | BaseException = await call()
        except Exception as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.fixture
async def client(server: FakeBananaServer) -> AsyncIterator[ba.BananaClient]:
    # No retries: the one bombed answer is the one measured.
    async with ba.BananaClient(API_KEY, base_url=server.url, max_retries=0, timeout=30) as c:
        yield c


# -- decoded bytes are what the caps count ------------------------------------------------------


async def test_a_gzip_bomb_create_answer_is_refused_without_inflating_it(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    server.inject(Fault.gzip_bomb(BOMB_BYTES), on="create")

    outcome, peak = await peak_memory(lambda: client.create("a cat"))

    assert isinstance(outcome, ba.ResponseValidationError), outcome
    assert "limit" in str(outcome)
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"


async def test_a_gzip_bomb_query_answer_is_refused_without_inflating_it(
    client: ba.BananaClient, server: FakeBananaServer
) -> None:
    task = await client.create("a cat")
    server.inject(Fault.gzip_bomb(BOMB_BYTES), on="query")

    outcome, peak = await peak_memory(lambda: client.get(task.id))

    assert isinstance(outcome, ba.ResponseValidationError), outcome
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"


async def test_a_compressed_answer_under_the_cap_is_read(server: FakeBananaServer) -> None:
    """The cap is on decoded bytes: a gzip body that inflates to less is accepted whole."""
    async with aiohttp.ClientSession() as session:
        server.inject(Fault.gzip_bomb(_transport.MAX_RESPONSE_BYTES), on="query")
        response = await _transport.send(
            session,
            HTTPRequest("GET", server.url + "/v1/result/x"),
            headers={},
            timeout=aiohttp.ClientTimeout(total=10),
        )
    assert response.body == bytes(_transport.MAX_RESPONSE_BYTES)

    async with aiohttp.ClientSession() as session:
        server.inject(Fault.gzip_bomb(_transport.MAX_RESPONSE_BYTES + 1), on="query")
        with pytest.raises(ba.ResponseValidationError):
            await _transport.send(
                session,
                HTTPRequest("GET", server.url + "/v1/result/x"),
                headers={},
                timeout=aiohttp.ClientTimeout(total=10),
            )


def gzip_png_bomb(expanded_bytes: int) -> bytes:
    """A gzip body that starts like a PNG and then inflates to ``expanded_bytes`` of zeros.

    The PNG start gets past the sniffing of the image sink, so that only the
    size cap can stop it.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = make_png(1, 1, (0, 0, 0))
    parts = [packer.compress(head)]
    block = bytes(1 << 20)
    left = expanded_bytes - len(head)
    while left > 0:
        parts.append(packer.compress(block[: min(left, len(block))]))
        left -= len(block)
    parts.append(packer.flush())
    return b"".join(parts)


async def test_a_gzip_bombed_image_is_too_large(
    client: ba.BananaClient, server: FakeBananaServer, tmp_path: Path
) -> None:
    body = gzip_png_bomb(BOMB_BYTES)
    limit = 1 << 20
    # Past the Content-Length check: only counting decoded bytes can refuse it.
    assert len(body) < limit
    bomb = Fault.status(
        200, body=body, headers={"Content-Encoding": "gzip"}, content_type="image/png"
    )
    task = ba.Task(id="bomb", status=ba.TaskStatus.COMPLETED, image_url=server.image_url("bomb"))
    server.inject(bomb, on="image")

    outcome, peak = await peak_memory(lambda: client.download(task, tmp_path, max_bytes=limit))

    assert isinstance(outcome, ba.DownloadError), outcome
    assert outcome.reason == "too_large"
    assert "announced" not in str(outcome)
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    assert list(tmp_path.iterdir()) == []


# -- the API request's URL ------------------------------------------------------------------


async def send_get(session: aiohttp.ClientSession, url: str) -> int:
    response = await _transport.send(
        session, HTTPRequest("GET", url), headers={}, timeout=aiohttp.ClientTimeout(total=10)
    )
    return response.status


async def test_send_keeps_the_path_byte_for_byte(server: FakeBananaServer) -> None:
    # Re-normalised, %2E%2E would be ".." and the path would climb to /v1/.
    async with aiohttp.ClientSession() as session:
        await send_get(session, server.url + "/v1/result/%2E%2E")
        await send_get(session, server.url + "/v1/result/a%2Fb%20c")
    assert [r.path for r in server.requests] == ["/v1/result/%2E%2E", "/v1/result/a%2Fb%20c"]
    assert [r.task_id for r in server.requests] == ["..", "a/b c"]


async def test_send_escapes_what_a_typed_base_url_left_unescaped(
    server: FakeBananaServer,
) -> None:
    async with aiohttp.ClientSession() as session:
        await send_get(session, server.url + "/my prefix/ü/v1/result/%2E%2E")
    assert server.requests[0].path == "/my%20prefix/%C3%BC/v1/result/%2E%2E"


@pytest.mark.parametrize("task_id", ["..", ".", "a/../b", "%2E", "x?y#z", "猫"])
async def test_dialect_urls_reach_the_server_as_built(
    client: ba.BananaClient, server: FakeBananaServer, task_id: str
) -> None:
    with pytest.raises(ba.NotFoundError):
        await client.get(task_id)
    assert [r.kind for r in server.requests] == ["query"]
    assert server.requests[0].path.startswith("/v1/result/")
    assert server.requests[0].task_id == task_id


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/v1/result/x",
        f"http://{'a' * 300}/v1/result/x",
        "http://127.0.0.1:99999/v1/result/x",
        "http:///v1/result/x",
    ],
)
async def test_send_refuses_an_unusable_url_before_sending(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ba.InvalidRequestError, match="URL"):
            await send_get(session, url)


@pytest.mark.parametrize(
    ("given", "host", "path"),
    [
        ("http://127.0.0.1:1234/v1/result/%2E%2E", "127.0.0.1", "/v1/result/%2E%2E"),
        ("https://host/prefix/v1/result/a%2Fb", "host", "/prefix/v1/result/a%2Fb"),
        ("http://[::1]:8080/v1/banana/images", "::1", "/v1/banana/images"),
        # Not ASCII (a base URL a user typed): IDNA for the host, UTF-8 escapes
        # for the path, and the escapes already there are left alone.
        (
            "https://bücher.example/ä/v1/result/%2E%2E",
            "xn--bcher-kva.example",
            "/%C3%A4/v1/result/%2E%2E",
        ),
        ("http://127.0.0.1:1234/my prefix/v1/result/x", "127.0.0.1", "/my%20prefix/v1/result/x"),
    ],
)
def test_the_wire_url_is_the_url_as_given(given: str, host: str, path: str) -> None:
    url = _transport._wire_url(given)
    assert url.raw_host == host
    assert url.raw_path == path
