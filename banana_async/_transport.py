"""The only module that talks to aiohttp: send one request, return one response.

Images are the exception to "one response": :func:`stream_to` streams a body
of any size into a sink instead of reading it whole.

Every aiohttp exception becomes an :class:`~banana_async.APIConnectionError`
(or :class:`~banana_async.APITimeoutError`) here, with ``request_sent`` set to
False only where the request provably never left: the connection was never
established. That single bit decides whether a create may be retried.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import aiohttp
import yarl

from banana_async.dialects import HTTPRequest, HTTPResponse, status_error
from banana_async.errors import (
    APIConnectionError,
    APITimeoutError,
    DownloadError,
    InvalidRequestError,
    ResponseValidationError,
)
from banana_async.models import url_problem

if TYPE_CHECKING:
    from banana_async.download import DownloadSink

MAX_RESPONSE_BYTES = 1 << 20
"""A task body is a few hundred bytes; anything past 1 MiB is not one."""

MAX_DOWNLOAD_REDIRECTS = 5
"""Image CDNs redirect once or twice; a longer chain is a loop or a trap."""

ERROR_BODY_BYTES = 16 * 1024
"""How much of an image host's error page is read for the exception."""

_READ_STEP = 64 * 1024
# The most one read of a capped body takes at once: the cap is checked between reads.


def make_session(*, connection_limit: int, user_agent: str) -> aiohttp.ClientSession:
    """A session for the client to own, tuned for many small JSON requests."""
    connector = aiohttp.TCPConnector(limit=connection_limit, limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": user_agent},
        # Timeouts are passed per request; the session default would be 5 min.
        timeout=aiohttp.ClientTimeout(total=None),
        # Cookies from one task's response have no business in another's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


def make_timeout(
    *, total: float | None, connect: float | None, sock_read: float | None = None
) -> aiohttp.ClientTimeout:
    """Per-request timeouts; ``connect`` also bounds waiting for a pooled connection."""
    return aiohttp.ClientTimeout(total=total, connect=connect, sock_read=sock_read)


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The decoded body, refused as soon as it grows past ``limit`` bytes.

    Content-Length counts the bytes on the wire; under a Content-Encoding the
    decoded body can be a thousand times larger (a gzip bomb), so it only
    refuses early. The cap itself is on what ``response.content`` yields,
    which is decoded, read in bounded steps and never whole.
    """
    length = response.content_length
    if length is not None and length > limit:
        raise ResponseValidationError(
            f"response body of {length} bytes exceeds the {limit}-byte limit",
            status_code=response.status,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_READ_STEP):
        size += len(chunk)
        if size > limit:
            raise ResponseValidationError(
                f"response body exceeds the {limit}-byte limit once decoded",
                status_code=response.status,
            )
        chunks.append(chunk)
    return b"".join(chunks)


# Characters a path or query may hold as they are (RFC 3986), "%" included so
# that escapes already made stay as they are.
_URL_SAFE = "/:@!$&'()*+,;=-._~%"
# Anything else in a URL (a space, a quote, a letter outside ASCII) needs escaping.
_NEEDS_ESCAPES = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;=\-._~%?#\[\]]")


def _wire_url(url: str) -> yarl.URL:
    """``url`` for aiohttp to send byte for byte, without yarl's re-normalising.

    Given a plain string, yarl decodes escapes of unreserved characters and
    resolves dot segments: the path ``/v1/result/%2E%2E`` of task ``..`` would
    become ``/v1/``. The dialects quote what they put into a URL, so a URL
    made of URL characters only is taken as encoded. Only a base URL typed
    with others (a space, a letter outside ASCII) needs encoding: IDNA for
    its host, UTF-8 escapes for the rest.

    Raises:
        ValueError: the URL cannot be parsed (yarl's own check).
    """
    if _NEEDS_ESCAPES.search(url):
        parts = urlsplit(url)
        authority = yarl.URL.build(scheme=parts.scheme, authority=parts.netloc).raw_authority
        url = f"{parts.scheme}://{authority}{quote(parts.path, safe=_URL_SAFE)}"
        if parts.query:
            url += "?" + quote(parts.query, safe=_URL_SAFE + "?")
    return yarl.URL(url, encoded=True)


async def send(
    session: aiohttp.ClientSession,
    request: HTTPRequest,
    *,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    max_body: int = MAX_RESPONSE_BYTES,
) -> HTTPResponse:
    """Send ``request`` once with ``headers`` and read the whole (bounded) response.

    ``headers`` replace the request's own: the caller merges in credentials
    once, as a multidict that aiohttp takes without converting it again.

    The URL is sent exactly as given (see :func:`_wire_url`).

    Raises:
        InvalidRequestError: the URL cannot be requested (malformed, a host
            no DNS could hold, a port out of range); nothing was sent.
        APIConnectionError: no complete response; ``request_sent`` tells
            whether the provider may have seen the request.
        APITimeoutError: the same, because a timeout fired.
        ResponseValidationError: the body is larger than ``max_body`` once
            decoded.
    """
    url = _checked_url(request)
    try:
        async with session.request(
            request.method,
            url,
            data=request.body,
            headers=headers,
            timeout=timeout,
            # A borrowed session may raise on error statuses; ours are read here.
            raise_for_status=False,
            # A redirected POST would be replayed as a GET, and a redirect could
            # carry the Authorization header to another host: follow none.
            allow_redirects=False,
        ) as response:
            body = await _read_body(response, max_body)
            return HTTPResponse(response.status, response.headers, body)
    except aiohttp.InvalidURL as exc:
        # Raised while building the request, before any connection: with no
        # redirects followed, never for a URL the provider sent.
        raise InvalidRequestError(
            f"cannot send {request.method} {_shown_url(request.url)}: {exc}"
        ) from None
    except aiohttp.ConnectionTimeoutError:
        raise APITimeoutError(
            f"timed out connecting for {request.method} {request.url}", request_sent=False
        ) from None
    except aiohttp.ClientConnectorError as exc:
        # Refused, DNS failure, TLS handshake failure: the request never left.
        raise APIConnectionError(
            f"could not connect for {request.method} {request.url}: {exc.os_error}",
            request_sent=False,
        ) from None
    except TimeoutError:
        raise APITimeoutError(
            f"timed out waiting for the response to {request.method} {request.url}"
        ) from None
    except aiohttp.ClientError as exc:
        raise APIConnectionError(
            f"connection failed during {request.method} {request.url}: {type(exc).__name__}: {exc}"
        ) from None
    except OSError as exc:
        raise APIConnectionError(
            f"connection failed during {request.method} {request.url}: {exc}"
        ) from None


def _checked_url(request: HTTPRequest) -> yarl.URL:
    """The request's URL for aiohttp, or InvalidRequestError before any I/O.

    aiohttp would refuse some of these itself, but others only fail deep in
    the connector (a host too long for IDNA raises UnicodeError there).
    """
    wire = _usable_wire_url(request.url)
    if isinstance(wire, yarl.URL):
        return wire
    raise InvalidRequestError(
        f"the URL of {request.method} {_shown_url(request.url)} {wire}; nothing was sent"
    )


@functools.lru_cache(maxsize=4096)
def _usable_wire_url(url: str) -> yarl.URL | str:
    """The URL for aiohttp, or why it cannot be one.

    Cached: a client sends every create to one URL and polls each task's URL
    several times; checking once is enough.
    """
    problem = url_problem(url)
    if problem is not None:
        return problem
    try:
        return _wire_url(url)
    except ValueError as exc:
        return f"cannot be parsed ({exc})"


def _shown_url(url: str) -> str:
    """The URL for a message, without its query: signed URLs carry tokens there."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparsable (an unclosed IPv6 bracket), yet it may still carry a token.
        return url.partition("?")[0].partition("#")[0]
    return parts._replace(query="", fragment="").geturl() if parts.query else url


@contextlib.contextmanager
def _download_errors(url: str, *, opening: bool = False) -> Iterator[None]:
    """Map aiohttp's exceptions during a download as :func:`send` maps them.

    Only aiohttp calls go inside, so that an error raised by the sink (an
    OSError of a full disk, say) is never taken for a connection failure.
    With ``opening`` (the request and its redirects, before any body), a
    ValueError is a URL that yarl or the resolver could not take.
    """
    what = f"GET {_shown_url(url)}"
    try:
        yield
    except aiohttp.TooManyRedirects:
        raise DownloadError(
            f"more than {MAX_DOWNLOAD_REDIRECTS} redirects for {what}",
            url=url,
            reason="too_many_redirects",
        ) from None
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        # Also a redirect to a non-http(s) or malformed location.
        raise DownloadError(
            f"not an http(s) URL for {what}: {exc}", url=url, reason="bad_url"
        ) from None
    except ValueError as exc:
        if not opening:
            raise
        # yarl refusing a URL (or a redirect's Location) that aiohttp did not
        # wrap, or a host name too long to resolve (UnicodeError from IDNA).
        raise DownloadError(
            f"unusable URL for {what}: {type(exc).__name__}: {exc}", url=url, reason="bad_url"
        ) from None
    except aiohttp.ConnectionTimeoutError:
        raise APITimeoutError(f"timed out connecting for {what}", request_sent=False) from None
    except aiohttp.ClientConnectorError as exc:
        raise APIConnectionError(
            f"could not connect for {what}: {exc.os_error}", request_sent=False
        ) from None
    except TimeoutError:
        raise APITimeoutError(f"timed out waiting for the response to {what}") from None
    except aiohttp.ClientError as exc:
        raise APIConnectionError(
            f"connection failed during {what}: {type(exc).__name__}: {exc}"
        ) from None
    except OSError as exc:
        raise APIConnectionError(f"connection failed during {what}: {exc}") from None


async def _read_prefix(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; the rest is left unread."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _too_large(url: str, max_bytes: int, announced: int | None) -> DownloadError:
    what = f"GET {_shown_url(url)}"
    if announced is None:
        message = f"{what} sent more than the {max_bytes}-byte limit"
    else:
        message = f"{what} announced {announced} bytes, over the {max_bytes}-byte limit"
    return DownloadError(message, url=url, reason="too_large")


async def _stream_body(
    response: aiohttp.ClientResponse, url: str, sink: DownloadSink, max_bytes: int
) -> int:
    if not 200 <= response.status <= 299:
        with _download_errors(url):
            body = await _read_prefix(response, ERROR_BODY_BYTES)
        raise status_error(HTTPResponse(response.status, response.headers, body))
    length = response.content_length
    if length is not None and length > max_bytes:
        raise _too_large(url, max_bytes, length)
    sink.begin(response.headers.get("Content-Type", ""), length)
    received = 0
    while True:
        with _download_errors(url):
            chunk = await response.content.readany()
        if not chunk:
            return received
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(url, max_bytes, None)
        sink.write(chunk)


async def stream_to(
    session: aiohttp.ClientSession,
    url: str,
    sink: DownloadSink,
    *,
    timeout: aiohttp.ClientTimeout,
    max_bytes: int,
    max_redirects: int = MAX_DOWNLOAD_REDIRECTS,
) -> int:
    """GET ``url`` and stream its body into ``sink``; return the bytes received.

    The request carries the session's own headers and nothing else (never an
    API key: image hosts are not the API). Redirects are followed, up to
    ``max_redirects``. ``timeout.total`` bounds the whole download, redirects
    and body included. Whatever the sink raises propagates unchanged.

    Raises:
        APIStatusError: (or a subclass) for a final status other than 2xx,
            with the first :data:`ERROR_BODY_BYTES` of the body.
        DownloadError: ``too_large`` when Content-Length (before anything is
            read) or the bytes received (decoded, when the host compressed
            them) exceed ``max_bytes``; ``too_many_redirects``; ``bad_url``
            for a URL (or a redirect target) that is not http(s) or that
            cannot be requested at all (a malformed host or port).
        APIConnectionError: no complete response; APITimeoutError on a timeout.
    """
    with _download_errors(url, opening=True):
        response = await session.get(
            url,
            timeout=timeout,
            allow_redirects=True,
            max_redirects=max_redirects,
            # A borrowed session may raise for status itself; statuses are mapped here.
            raise_for_status=False,
        )
    try:
        received = await _stream_body(response, url, sink, max_bytes)
    except BaseException:
        # Drop the connection: the rest of an aborted body is not worth reading.
        response.close()
        raise
    response.release()
    return received
