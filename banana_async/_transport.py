"""The only module that talks to aiohttp: send one request, return one response.

Images are the exception to "one response": :func:`stream_to` streams a body
of any size into a :class:`DownloadSink` instead of reading it whole.

Every aiohttp exception becomes an :class:`~banana_async.APIConnectionError`
(or :class:`~banana_async.APITimeoutError`) here, in one place
(:func:`_mapped_error`), with ``request_sent`` set to False only where the
request provably never left: the connection was never established. That
single bit decides whether a create may be retried.

What an HTTP status means is not decided here: a response goes back to the
caller as status, headers and bytes, and the dialect layer reads it
(:func:`banana_async.dialects.error_for_status`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import yarl

from banana_async._checks import error_text
from banana_async.dialects import HTTPRequest, HTTPResponse
from banana_async.errors import (
    APIConnectionError,
    APITimeoutError,
    DownloadError,
    InvalidRequestError,
    ResponseValidationError,
)
from banana_async.models import url_problem

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


def image_timeout(api: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
    """The timeouts of an image download, from those of an API request.

    An image is bigger than a task body: its whole transfer gets longer, but
    it must still keep arriving (``sock_read``) to count as alive.
    """
    return make_timeout(
        total=None if api.total is None else 10 * api.total,
        connect=api.connect,
        sock_read=api.total,
    )


def pool_size(session: aiohttp.ClientSession) -> int | None:
    """How many connections the session's pool holds (None: no limit).

    For a borrowed session with a per-host limit, the smaller one: the API
    is one or two hosts.
    """
    connector = session.connector
    if connector is None:
        return None
    limits = [n for n in (connector.limit, connector.limit_per_host) if n > 0]
    return min(limits) if limits else None


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
            f"cannot send {request.method} {shown_url(request.url)}: {exc}"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _mapped_error(exc, f"{request.method} {request.url}") from None


def _checked_url(request: HTTPRequest) -> yarl.URL:
    """The request's URL for aiohttp, or InvalidRequestError before any I/O.

    aiohttp would refuse some of these itself, but others only fail deep in
    the connector (a host too long for IDNA raises UnicodeError there).
    """
    wire = _usable_wire_url(request.url)
    if isinstance(wire, yarl.URL):
        return wire
    raise InvalidRequestError(
        f"the URL of {request.method} {shown_url(request.url)} {wire}; nothing was sent"
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


def shown_url(url: str) -> str:
    """The URL for a message, without its query: signed URLs carry tokens there."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparsable (an unclosed IPv6 bracket), yet it may still carry a token.
        return url.partition("?")[0].partition("#")[0]
    return parts._replace(query="", fragment="").geturl() if parts.query else url


def _mapped_error(exc: BaseException, what: str) -> BaseException:
    """The package's error for an exception aiohttp raised during ``what``.

    The one mapper of every request, API or image: ``what`` names the
    request ("GET https://..."). An exception that is none of aiohttp's
    (nor a timeout or OSError) is returned as it is.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"timed out connecting for {what}", request_sent=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, DNS failure, TLS handshake failure: the request never left.
        return APIConnectionError(
            f"could not connect for {what}: {exc.os_error}", request_sent=False
        )
    if isinstance(exc, TimeoutError):
        return APITimeoutError(f"timed out waiting for the response to {what}")
    if isinstance(exc, aiohttp.ClientError):
        return APIConnectionError(f"connection failed during {what}: {error_text(exc)}")
    if isinstance(exc, OSError):
        return APIConnectionError(f"connection failed during {what}: {exc}")
    return exc


def _download_error(exc: BaseException, url: str, *, opening: bool = False) -> BaseException:
    """The package's error for an exception aiohttp raised during a download.

    Only aiohttp calls may raise what is mapped here, so that an error raised
    by the sink (an OSError of a full disk, say) is never taken for a
    connection failure. With ``opening`` (the request and its redirects,
    before any body), a ValueError is a URL that yarl or the resolver could
    not take.
    """
    what = f"GET {shown_url(url)}"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return DownloadError(
            f"more than {MAX_DOWNLOAD_REDIRECTS} redirects for {what}",
            url=url,
            reason="too_many_redirects",
        )
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        # Also a redirect to a non-http(s) or malformed location.
        return DownloadError(f"not an http(s) URL for {what}: {exc}", url=url, reason="bad_url")
    if isinstance(exc, ValueError) and opening:
        # yarl refusing a URL (or a redirect's Location) that aiohttp did not
        # wrap, or a host name too long to resolve (UnicodeError from IDNA).
        return DownloadError(
            f"unusable URL for {what}: {error_text(exc)}", url=url, reason="bad_url"
        )
    return _mapped_error(exc, what)


class DownloadSink(Protocol):
    """Where a download puts the response body, chunk by chunk, as it arrives.

    ``begin`` is called once, after the status was found to be 2xx and before
    any ``write``; either may raise to abort the download.
    """

    def begin(self, content_type: str, content_length: int | None) -> None:
        """Look at the response before its body: its raw Content-Type and length."""

    def write(self, chunk: bytes) -> None:
        """Take the next chunk of the body."""


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
    what = f"GET {shown_url(url)}"
    if announced is None:
        message = f"{what} sent more than the {max_bytes}-byte limit"
    else:
        message = f"{what} announced {announced} bytes, over the {max_bytes}-byte limit"
    return DownloadError(message, url=url, reason="too_large")


# What aiohttp raises while a response is read: mapped by _download_error.
_READ_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


async def _stream_body(
    response: aiohttp.ClientResponse, url: str, sink: DownloadSink, max_bytes: int
) -> int | HTTPResponse:
    if not 200 <= response.status <= 299:
        try:
            body = await _read_prefix(response, ERROR_BODY_BYTES)
        except _READ_ERRORS as exc:
            raise _download_error(exc, url) from None
        return HTTPResponse(response.status, response.headers, body)
    length = response.content_length
    if length is not None and length > max_bytes:
        raise _too_large(url, max_bytes, length)
    sink.begin(response.headers.get("Content-Type", ""), length)
    received = 0
    content = response.content
    while True:
        # Only aiohttp's call is inside: what the sink raises is never mapped.
        try:
            chunk = await content.readany()
        except _READ_ERRORS as exc:
            raise _download_error(exc, url) from None
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
) -> int | HTTPResponse:
    """GET ``url`` and stream its body into ``sink``.

    The request carries the session's own headers and nothing else (never an
    API key: image hosts are not the API). Redirects are followed, up to
    ``max_redirects``. ``timeout.total`` bounds the whole download, redirects
    and body included. Whatever the sink raises propagates unchanged.

    Returns:
        The number of bytes the sink received; or, for a final status other
        than 2xx, that response with the first :data:`ERROR_BODY_BYTES` of
        its body (the sink untouched), for the caller to read (see
        :func:`banana_async.dialects.error_for_status`).

    Raises:
        DownloadError: ``too_large`` when Content-Length (before anything is
            read) or the bytes received (decoded, when the host compressed
            them) exceed ``max_bytes``; ``too_many_redirects``; ``bad_url``
            for a URL (or a redirect target) that is not http(s) or that
            cannot be requested at all (a malformed host or port).
        APIConnectionError: no complete response; APITimeoutError on a timeout.
    """
    try:
        response = await session.get(
            url,
            timeout=timeout,
            allow_redirects=True,
            max_redirects=max_redirects,
            # A borrowed session may raise for status itself; statuses are read here.
            raise_for_status=False,
        )
    except (*_READ_ERRORS, ValueError) as exc:
        raise _download_error(exc, url, opening=True) from None
    try:
        received = await _stream_body(response, url, sink, max_bytes)
    except BaseException:
        # Drop the connection: the rest of an aborted body is not worth reading.
        response.close()
        raise
    if isinstance(received, HTTPResponse):
        response.close()  # the rest of an error page is not worth reading either
    else:
        response.release()
    return received
