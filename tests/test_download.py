"""download_task_image over real loopback HTTP, into real files; safe_file_stem properties."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import banana_async as ba
from banana_async import _transport
from banana_async._png import PNG_SIGNATURE, make_png
from banana_async.download import (
    DEFAULT_MAX_IMAGE_BYTES,
    MAX_STEM_LENGTH,
    download_task_image,
    image_extension,
    safe_file_stem,
)
from banana_async.testing import FakeBananaServer, Fault, TaskScript

from .conftest import API_KEY

TIMEOUT = 5.0
SAFE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP = (
    b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00"
    b"\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def completed_task(
    session: aiohttp.ClientSession, server: FakeBananaServer, task_id: str | None = None
) -> ba.Task:
    """Create a task on the fake provider, finish it, and describe it as a client would."""
    server.plan(TaskScript(duration=None, task_id=task_id))
    async with session.post(
        f"{server.url}/v1/banana/images",
        json={"prompt": "a cat", "model": "nano-banana-2"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 200
        created = await response.json()
    server.finish(created["id"])
    return ba.Task(
        id=created["id"],
        status=ba.TaskStatus.COMPLETED,
        raw_status="completed",
        image_url=server.image_url(created["id"]),
    )


def check_png(data: bytes, width: int, height: int) -> None:
    """Walk the chunks of a PNG: CRCs, header, pixel data size, IEND."""
    assert data.startswith(PNG_SIGNATURE)
    offset = len(PNG_SIGNATURE)
    kinds: list[bytes] = []
    idat = b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        kinds.append(kind)
        if kind == b"IHDR":
            assert struct.unpack(">II", body[:8]) == (width, height)
        if kind == b"IDAT":
            idat += body
        offset += 12 + length
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the happy path -----------------------------------------------------------------


async def test_saves_the_png_as_id_dot_png(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    dest = tmp_path / "out" / "nested"

    path = await download_task_image(session, task, dest, timeout=TIMEOUT)

    assert dest.is_dir()
    assert path == dest / f"{task.id}.png"
    assert files_in(dest) == [f"{task.id}.png"]
    data = path.read_bytes()
    check_png(data, *server.image_size)
    async with session.get(task.image_url or "") as response:
        assert data == await response.read()
    # Readable like any other new file, not mkstemp's private 0600.
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


async def test_the_image_host_gets_no_authorization(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    await download_task_image(session, task, tmp_path, timeout=TIMEOUT)

    images = [r for r in server.requests if r.kind == "image"]
    assert len(images) == 1
    assert images[0].method == "GET"
    assert images[0].authorization is None
    assert all(API_KEY not in value for value in images[0].headers.values())
    # The create did carry the key: the session is not simply keyless by accident.
    assert server.requests[0].authorization == f"Bearer {API_KEY}"


async def test_a_second_download_replaces_the_file(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    stale = tmp_path / f"{task.id}.png"
    stale.write_bytes(b"an old, broken file")

    first = await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    second = await download_task_image(session, task, tmp_path, timeout=TIMEOUT)

    assert first == second == stale
    check_png(stale.read_bytes(), *server.image_size)
    assert files_in(tmp_path) == [stale.name]


@pytest.mark.parametrize(
    ("body", "content_type", "extension"),
    [
        (JPEG, "image/jpeg", ".jpg"),
        (GIF, "image/gif", ".gif"),
        (WEBP, "image/webp", ".webp"),
        # The bytes decide the extension, whatever the server claims.
        (JPEG, "image/png", ".jpg"),
        # Object stores serve untyped uploads as octet-stream; the bytes still decide.
        (make_png(2, 2, (1, 2, 3)), "application/octet-stream", ".png"),
    ],
)
async def test_the_extension_comes_from_the_bytes(
    session: aiohttp.ClientSession,
    server: FakeBananaServer,
    tmp_path: Path,
    body: bytes,
    content_type: str,
    extension: str,
) -> None:
    task = await completed_task(session, server)
    server.inject(Fault.body(body, content_type=content_type), on="image")

    path = await download_task_image(session, task, tmp_path, timeout=TIMEOUT)

    assert path.name == task.id + extension
    assert path.read_bytes() == body


@pytest.mark.parametrize(
    "task_id",
    [
        "../../etc/passwd",
        "a/b",
        "a\\b",
        "CON",
        "con",
        "nul.txt",
        ".hidden",
        "..",
        "猫の画像",
        "x" * 300,
        "tab\there",
    ],
)
async def test_unsafe_ids_make_safe_names_inside_dest(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path, task_id: str
) -> None:
    task = await completed_task(session, server, task_id)
    dest = tmp_path / "out"

    path = await download_task_image(session, task, dest, timeout=TIMEOUT)

    assert path.parent == dest
    assert path.resolve().parent == dest.resolve()
    assert files_in(dest) == [path.name]
    assert files_in(tmp_path) == ["out"]
    assert not path.name.startswith(".")
    assert set(path.stem) <= SAFE_CHARS
    assert len(path.stem) <= MAX_STEM_LENGTH
    assert path.stem.partition(".")[0].upper() not in {"CON", "NUL"}
    check_png(path.read_bytes(), *server.image_size)


async def test_distinct_ids_get_distinct_files(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    ids = ["a/b", "a:b", "a_b", "a b", "A_b", "x" * 300, "x" * 301, ".x", "_x"]
    paths = []
    for task_id in ids:
        task = await completed_task(session, server, task_id)
        paths.append(await download_task_image(session, task, tmp_path, timeout=TIMEOUT))
    assert len({p.name.lower() for p in paths}) == len(ids)
    assert len(files_in(tmp_path)) == len(ids)


# -- refusals that leave nothing behind ---------------------------------------------------


async def test_a_non_image_content_type_is_refused(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    server.inject(
        Fault.body("<html><body>Sign in to the Wi-Fi</body></html>", content_type="text/html"),
        on="image",
    )
    with pytest.raises(ba.DownloadError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    assert info.value.reason == "not_an_image"
    assert info.value.url == task.image_url
    assert "text/html" in str(info.value)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "body",
    [b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"not a png at all, really", b"", b"\x89PN"],
)
async def test_image_content_type_with_other_bytes_is_refused(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path, body: bytes
) -> None:
    task = await completed_task(session, server)
    server.inject(Fault.body(body, content_type="image/png"), on="image")
    with pytest.raises(ba.DownloadError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    assert info.value.reason == "not_an_image"
    assert files_in(tmp_path) == []


async def test_over_the_cap_by_content_length(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    big = make_png(4, 4, (0, 0, 0)) + bytes(200_000)
    server.inject(Fault.body(big, content_type="image/png"), on="image")
    with pytest.raises(ba.DownloadError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT, max_bytes=100_000)
    assert info.value.reason == "too_large"
    assert "announced" in str(info.value)
    assert files_in(tmp_path) == []


async def test_exactly_at_the_cap_is_accepted(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    async with session.get(task.image_url or "") as response:
        size = len(await response.read())
    path = await download_task_image(session, task, tmp_path, timeout=TIMEOUT, max_bytes=size)
    assert path.stat().st_size == size


async def test_task_without_an_image(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    for task in [
        ba.Task(id="t1", status=ba.TaskStatus.PROCESSING, raw_status="processing"),
        ba.Task(id="t2", status=ba.TaskStatus.FAILED, error="content policy"),
        ba.Task(id="t3", status=ba.TaskStatus.COMPLETED, image_url=None),
        ba.Task(id="t4", status=ba.TaskStatus.COMPLETED, image_url=""),
        ba.Task(id="t5", status=ba.TaskStatus.QUEUED, image_url="http://127.0.0.1:9/x.png"),
    ]:
        with pytest.raises(ba.DownloadError) as info:
            await download_task_image(session, task, tmp_path / "out", timeout=TIMEOUT)
        assert info.value.reason == "no_image_url"
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "url",
    ["ftp://example.test/a.png", "file:///etc/passwd", "/images/a.png", "http:///a.png"],
)
async def test_non_http_urls_are_refused(
    session: aiohttp.ClientSession, tmp_path: Path, url: str
) -> None:
    task = ba.Task(id="t", status=ba.TaskStatus.COMPLETED, image_url=url)
    with pytest.raises(ba.DownloadError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    assert info.value.reason == "bad_url"
    assert info.value.url == url
    assert files_in(tmp_path) == []


LONG_HOST = "a" * 300

UNUSABLE_URLS = [
    "http://[::1/x.png",  # an IPv6 bracket never closed
    f"http://{LONG_HOST}/x.png",  # longer than any DNS name
    f"http://{'a' * 64}.example/x.png",  # one label longer than 63
    "http://127.0.0.1:99999/x.png",  # a port out of range
]


@pytest.fixture
async def banana(server: FakeBananaServer) -> AsyncIterator[ba.BananaClient]:
    async with ba.BananaClient(API_KEY, base_url=server.url, timeout=TIMEOUT) as client:
        yield client


@pytest.mark.parametrize("url", UNUSABLE_URLS)
async def test_unusable_image_urls_are_bad_urls(
    banana: ba.BananaClient, server: FakeBananaServer, tmp_path: Path, url: str
) -> None:
    task = ba.Task(id="t", status=ba.TaskStatus.COMPLETED, image_url=url)
    with pytest.raises(ba.DownloadError) as info:
        await banana.download(task, tmp_path)
    assert info.value.reason == "bad_url"
    assert info.value.url == url
    assert files_in(tmp_path) == []
    assert server.requests == []


@pytest.mark.parametrize("url", UNUSABLE_URLS)
async def test_stream_to_maps_unusable_urls_to_bad_url(
    session: aiohttp.ClientSession, url: str
) -> None:
    """Even without the check of download_task_image, no aiohttp or yarl error escapes."""

    class NoSink:
        def begin(self, content_type: str, content_length: int | None) -> None:
            raise AssertionError("no response expected")

        def write(self, chunk: bytes) -> None:
            raise AssertionError("no response expected")

    with pytest.raises(ba.DownloadError) as info:
        await _transport.stream_to(
            session, url, NoSink(), timeout=aiohttp.ClientTimeout(total=TIMEOUT), max_bytes=10
        )
    assert info.value.reason == "bad_url"


@pytest.mark.parametrize(
    "location",
    [
        "http://[::1/x",
        f"http://{LONG_HOST}/x.png",
        "http://127.0.0.1:99999/x.png",
        "ftp://example.test/x.png",
    ],
)
async def test_a_redirect_to_an_unusable_location_is_a_bad_url(
    banana: ba.BananaClient, server: FakeBananaServer, tmp_path: Path, location: str
) -> None:
    task = ba.Task(id="t", status=ba.TaskStatus.COMPLETED, image_url=server.image_url("t"))
    server.inject(Fault.status(302, headers={"Location": location}), on="image")
    with pytest.raises(ba.DownloadError) as info:
        await banana.download(task, tmp_path)
    assert info.value.reason == "bad_url"
    assert info.value.url == task.image_url
    assert files_in(tmp_path) == []
    assert [r.kind for r in server.requests] == ["image"]


async def test_max_bytes_must_be_positive(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    task = ba.Task(id="t", status=ba.TaskStatus.COMPLETED, image_url="http://127.0.0.1:9/a.png")
    with pytest.raises(ValueError, match="max_bytes"):
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT, max_bytes=0)


# -- HTTP and connection failures ---------------------------------------------------------


async def test_404_is_not_found(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = ba.Task(id="gone", status=ba.TaskStatus.COMPLETED, image_url=server.image_url("gone"))
    with pytest.raises(ba.NotFoundError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    assert info.value.status_code == 404
    assert "image not found" in info.value.body
    assert files_in(tmp_path) == []


async def test_500_is_a_server_error(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    server.inject(Fault.status(500), on="image")
    with pytest.raises(ba.ServerError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    assert info.value.status_code == 500
    assert files_in(tmp_path) == []


async def test_a_stall_times_out(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    server.inject(Fault.stall(30.0), on="image")
    with pytest.raises(ba.APITimeoutError):
        await download_task_image(session, task, tmp_path, timeout=0.2)
    assert files_in(tmp_path) == []


async def test_a_reset_is_a_connection_error(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    # aiohttp retries an idempotent GET once after a disconnect.
    server.inject(Fault.reset(), on="image", times=2)
    with pytest.raises(ba.APIConnectionError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    assert not isinstance(info.value, ba.APITimeoutError)
    assert files_in(tmp_path) == []


async def test_connection_refused(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with FakeBananaServer() as gone:
        url = gone.image_url("x")
    task = ba.Task(id="x", status=ba.TaskStatus.COMPLETED, image_url=url)
    with pytest.raises(ba.APIConnectionError) as info:
        await download_task_image(session, task, tmp_path, timeout=TIMEOUT)
    assert info.value.request_sent is False
    assert files_in(tmp_path) == []


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll state of the fake server that has no event to wait on."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


async def test_cancelled_while_waiting_for_the_host_leaves_nothing(
    session: aiohttp.ClientSession, server: FakeBananaServer, tmp_path: Path
) -> None:
    task = await completed_task(session, server)
    server.inject(Fault.stall(30.0), on="image")
    download = asyncio.create_task(download_task_image(session, task, tmp_path, timeout=TIMEOUT))
    await wait_for(lambda: server.count("image") == 1)
    assert [name for name in files_in(tmp_path) if name.endswith(".part")]

    download.cancel()
    with pytest.raises(asyncio.CancelledError):
        await download
    assert files_in(tmp_path) == []


# -- a host of our own: chunked bodies, a body that stops, redirects -------------------------


class ImageHost:
    """A tiny web server for what the fake provider does not do."""

    def __init__(self) -> None:
        self.url = ""
        self.release = asyncio.Event()
        self.stuck_sent = asyncio.Event()
        self.headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/chunked/{size}", self.chunked)
        app.router.add_get("/tiny", self.tiny)
        app.router.add_get("/stuck", self.stuck)
        app.router.add_get("/hop/{n}", self.hop)
        app.router.add_get("/to-ftp", self.to_ftp)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def task(self, path: str, task_id: str = "hosted") -> ba.Task:
        return ba.Task(id=task_id, status=ba.TaskStatus.COMPLETED, image_url=self.url + path)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        """A PNG signature, then ``size`` more bytes in 16 KiB chunks, no Content-Length."""
        size = int(request.match_info["size"])
        response = await self._stream(request)
        await response.write(PNG_SIGNATURE)
        while size > 0:
            await response.write(bytes(min(size, 16384)))
            size -= 16384
        await response.write_eof()
        return response

    async def tiny(self, request: web.Request) -> web.StreamResponse:
        """A GIF of 6 bytes, written 1 byte at a time: shorter than the sniffing window."""
        response = await self._stream(request)
        for byte in b"GIF89a":
            await response.write(bytes([byte]))
        await response.write_eof()
        return response

    async def stuck(self, request: web.Request) -> web.StreamResponse:
        """Some of a PNG, then nothing until the host closes."""
        response = await self._stream(request)
        await response.write(PNG_SIGNATURE + bytes(1000))
        self.stuck_sent.set()
        await self.release.wait()
        return response

    async def hop(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        self.headers.append(dict(request.headers))
        target = "/chunked/100" if n == 0 else f"/hop/{n - 1}"
        raise web.HTTPFound(target)

    async def to_ftp(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("ftp://example.test/a.png")


@pytest.fixture
async def host() -> AsyncIterator[ImageHost]:
    image_host = ImageHost()
    await image_host.start()
    try:
        yield image_host
    finally:
        await image_host.close()


async def test_chunked_body_without_length(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    path = await download_task_image(session, host.task("/chunked/100000"), tmp_path, timeout=5)
    assert path.name == "hosted.png"
    assert path.read_bytes() == PNG_SIGNATURE + bytes(100_000)


async def test_over_the_cap_while_streaming(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    with pytest.raises(ba.DownloadError) as info:
        await download_task_image(
            session, host.task("/chunked/200000"), tmp_path, timeout=5, max_bytes=100_000
        )
    assert info.value.reason == "too_large"
    assert "announced" not in str(info.value)
    assert files_in(tmp_path) == []


async def test_a_body_shorter_than_the_sniffing_window(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    path = await download_task_image(session, host.task("/tiny"), tmp_path, timeout=5)
    assert path.name == "hosted.gif"
    assert path.read_bytes() == b"GIF89a"


async def test_cancelled_mid_body_leaves_nothing(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    download = asyncio.create_task(
        download_task_image(session, host.task("/stuck"), tmp_path, timeout=30)
    )
    async with asyncio.timeout(5):
        await host.stuck_sent.wait()
    await asyncio.sleep(0.1)  # let the client take in the first bytes
    assert not download.done()
    assert [name for name in files_in(tmp_path) if name.endswith(".part")]
    download.cancel()
    with pytest.raises(asyncio.CancelledError):
        await download
    assert files_in(tmp_path) == []


async def test_a_body_that_stops_times_out(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    with pytest.raises(ba.APITimeoutError):
        await download_task_image(session, host.task("/stuck"), tmp_path, timeout=0.3)
    assert files_in(tmp_path) == []


async def test_redirects_are_followed_without_credentials(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    path = await download_task_image(session, host.task("/hop/2"), tmp_path, timeout=5)
    assert path.read_bytes() == PNG_SIGNATURE + bytes(100)
    assert len(host.headers) == 4
    assert all("Authorization" not in h for h in host.headers)


async def test_too_many_redirects(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    with pytest.raises(ba.DownloadError) as info:
        await download_task_image(session, host.task("/hop/10"), tmp_path, timeout=5)
    assert info.value.reason == "too_many_redirects"
    assert files_in(tmp_path) == []


async def test_a_redirect_to_another_scheme_is_refused(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    with pytest.raises(ba.DownloadError) as info:
        await download_task_image(session, host.task("/to-ftp"), tmp_path, timeout=5)
    assert info.value.reason == "bad_url"
    assert files_in(tmp_path) == []


async def test_a_sink_error_is_not_a_connection_error(
    session: aiohttp.ClientSession, host: ImageHost, tmp_path: Path
) -> None:
    class FullDisk:
        def begin(self, content_type: str, content_length: int | None) -> None:
            pass

        def write(self, chunk: bytes) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as info:
        await _transport.stream_to(
            session,
            host.url + "/chunked/10",
            FullDisk(),
            timeout=aiohttp.ClientTimeout(total=5),
            max_bytes=DEFAULT_MAX_IMAGE_BYTES,
        )
    assert not isinstance(info.value, ba.BananaError)


# -- stream_to's cap, seen from the sink ------------------------------------------------------


class RecordingSink:
    def __init__(self) -> None:
        self.begun: list[tuple[str, int | None]] = []
        self.received = 0

    def begin(self, content_type: str, content_length: int | None) -> None:
        self.begun.append((content_type, content_length))

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)


StreamTo = Callable[[str, RecordingSink, int], Awaitable[int]]


@pytest.fixture
def stream_to(session: aiohttp.ClientSession) -> StreamTo:
    async def run(url: str, sink: RecordingSink, max_bytes: int) -> int:
        received = await _transport.stream_to(
            session, url, sink, timeout=aiohttp.ClientTimeout(total=5), max_bytes=max_bytes
        )
        assert isinstance(received, int)  # not an error status's response
        return received

    return run


async def test_an_announced_length_over_the_cap_is_refused_before_reading(
    session: aiohttp.ClientSession, server: FakeBananaServer, stream_to: StreamTo
) -> None:
    task = await completed_task(session, server)
    server.inject(Fault.body(bytes(200_000), content_type="image/png"), on="image")
    sink = RecordingSink()
    with pytest.raises(ba.DownloadError, match="announced 200000 bytes"):
        await stream_to(task.image_url or "", sink, 100_000)
    assert sink.begun == []
    assert sink.received == 0


async def test_a_streamed_body_over_the_cap_stops_at_the_cap(
    host: ImageHost, stream_to: StreamTo
) -> None:
    sink = RecordingSink()
    with pytest.raises(ba.DownloadError) as info:
        await stream_to(host.url + "/chunked/1000000", sink, 100_000)
    assert info.value.reason == "too_large"
    assert sink.begun == [("image/png", None)]
    assert sink.received <= 100_000


async def test_stream_to_returns_the_byte_count(
    session: aiohttp.ClientSession, server: FakeBananaServer, stream_to: StreamTo
) -> None:
    task = await completed_task(session, server)
    sink = RecordingSink()
    size = await stream_to(task.image_url or "", sink, DEFAULT_MAX_IMAGE_BYTES)
    assert size == sink.received > len(PNG_SIGNATURE)
    assert sink.begun == [("image/png", size)]


# -- pure parts ------------------------------------------------------------------------------


def test_image_extension() -> None:
    assert image_extension(make_png(1, 1, (0, 0, 0))) == ".png"
    assert image_extension(JPEG) == ".jpg"
    assert image_extension(GIF) == ".gif"
    assert image_extension(b"GIF87a") == ".gif"
    assert image_extension(WEBP) == ".webp"
    assert image_extension(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert image_extension(b"<html>") is None
    assert image_extension(b"") is None


@pytest.mark.parametrize(
    ("task_id", "expected"),
    [
        ("5f3a9c2e71b0", "5f3a9c2e71b0"),
        ("task_01-x.y", "task_01-x.y"),
        ("x" * MAX_STEM_LENGTH, "x" * MAX_STEM_LENGTH),
    ],
)
def test_safe_ids_are_their_own_stem(task_id: str, expected: str) -> None:
    assert safe_file_stem(task_id) == expected


@pytest.mark.parametrize(
    ("task_id", "prefix"),
    [
        ("a/b", "a_b-"),
        ("../../etc/passwd", "_._.._etc_passwd-"),
        (".hidden", "_hidden-"),
        ("CON", "_CON-"),
        ("com1.tar.gz", "_com1.tar.gz-"),
        ("", "_-"),
        ("Task1", "Task1-"),
        # A safe id that looks hashed is hashed, so no other id can claim its name.
        ("a_-0123456789ab", "a_-0123456789ab-"),
    ],
)
def test_changed_ids_get_a_hash(task_id: str, prefix: str) -> None:
    stem = safe_file_stem(task_id)
    assert stem.startswith(prefix)
    assert len(stem) == len(prefix) + 12
    assert stem == safe_file_stem(task_id)  # stable


def test_long_ids_are_cut_and_kept_apart() -> None:
    a, b = "x" * 150, "x" * 151
    assert len(safe_file_stem(a)) == MAX_STEM_LENGTH
    assert safe_file_stem(a) != safe_file_stem(b)
    assert safe_file_stem("x" * (MAX_STEM_LENGTH + 1)).startswith("x" * 80)


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task_id=st.text())
def test_safe_file_stem_is_always_safe(tmp_path: Path, task_id: str) -> None:
    dest = tmp_path / "dest"
    stem = safe_file_stem(task_id)
    assert stem
    assert set(stem) <= SAFE_CHARS
    assert not stem.startswith(".")
    assert len(stem) <= MAX_STEM_LENGTH
    assert stem.partition(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    assert Path(dest, stem + ".png").resolve().parent == dest.resolve()


ids = st.text(alphabet="aAbB/._-:\x00é", max_size=8) | st.text()


@settings(max_examples=500)
@given(first=ids, second=ids)
def test_distinct_ids_never_share_a_stem(first: str, second: str) -> None:
    assume(first != second)
    # Compared case-insensitively, as macOS and Windows compare file names.
    assert safe_file_stem(first).lower() != safe_file_stem(second).lower()
