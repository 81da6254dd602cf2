"""The only module that talks to aiohttp: send one request, return one response.

Every aiohttp exception becomes an :class:`~banana_async.APIConnectionError`
(or :class:`~banana_async.APITimeoutError`) here, with ``request_sent`` set to
False only where the request provably never left: the connection was never
established. That single bit decides whether a create may be retried.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from banana_async.dialects import HTTPRequest, HTTPResponse
from banana_async.errors import APIConnectionError, APITimeoutError, ResponseValidationError

MAX_RESPONSE_BYTES = 1 << 20
"""A task body is a few hundred bytes; anything past 1 MiB is not one."""


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


def make_timeout(*, total: float | None, connect: float | None) -> aiohttp.ClientTimeout:
    """Per-request timeouts; ``connect`` also bounds waiting for a pooled connection."""
    return aiohttp.ClientTimeout(total=total, connect=connect)


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    length = response.content_length
    if length is not None and length <= limit:
        return await response.read()
    if length is not None:
        raise ResponseValidationError(
            f"response body of {length} bytes exceeds the {limit}-byte limit",
            status_code=response.status,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ResponseValidationError(
                f"response body exceeds the {limit}-byte limit", status_code=response.status
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def send(
    session: aiohttp.ClientSession,
    request: HTTPRequest,
    *,
    auth_headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    max_body: int = MAX_RESPONSE_BYTES,
) -> HTTPResponse:
    """Send ``request`` once and read the whole (bounded) response.

    Raises:
        APIConnectionError: no complete response; ``request_sent`` tells
            whether the provider may have seen the request.
        APITimeoutError: the same, because a timeout fired.
        ResponseValidationError: the body is larger than ``max_body``.
    """
    headers = {**request.headers, **auth_headers}
    what = f"{request.method} {request.url}"
    try:
        async with session.request(
            request.method,
            request.url,
            data=request.body,
            headers=headers,
            timeout=timeout,
            # A redirected POST would be replayed as a GET, and a redirect could
            # carry the Authorization header to another host: follow none.
            allow_redirects=False,
        ) as response:
            body = await _read_body(response, max_body)
            return HTTPResponse(response.status, response.headers, body)
    except aiohttp.ConnectionTimeoutError:
        raise APITimeoutError(f"timed out connecting for {what}", request_sent=False) from None
    except aiohttp.ClientConnectorError as exc:
        # Refused, DNS failure, TLS handshake failure: the request never left.
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
