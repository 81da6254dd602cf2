"""Failures to inject into the fake server's answers."""

from __future__ import annotations

import html
import json
import types
import zlib
from typing import TYPE_CHECKING, Any, Literal, Self

import attrs

from banana_async.testing._common import (
    check_non_negative,
    freeze_any,
    freeze_mapping,
    non_negative,
    reason_phrase,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = ["ERROR_TYPES", "Fault", "FaultAction", "FaultTarget"]

#: Which requests an injected fault applies to.
FaultTarget = Literal["create", "query", "image", "any"]
#: What an injected fault does.
FaultAction = Literal["respond", "reset", "stall", "status_word", "edit"]

#: The ``type`` of the fake's JSON error bodies, by HTTP status.
ERROR_TYPES: Mapping[int, str] = types.MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found",
        429: "rate_limit_error",
    }
)


@attrs.frozen
class Fault:
    """A failure to inject into the server's answers; build one with a classmethod.

    Attributes:
        action: What happens: ``respond`` (a canned response), ``reset`` (the
            connection is dropped), ``stall`` (a delay, then the normal answer)
            or ``status_word`` (a normal query answer with another status word).
        status_code: The HTTP status of a canned response.
        payload: The body of a canned response.
        headers: Extra headers of a canned response.
        content_type: The ``Content-Type`` of a canned response.
        process: Whether the request is processed (a create creates its task)
            before the fault strikes. Only meaningful for creates.
        seconds: How long a stall lasts.
        word: The status word of a ``status_word`` fault.
        changes: JSON fields an ``edit`` fault sets in the normal answer.
        remove: JSON fields an ``edit`` fault deletes from the normal answer.
    """

    action: FaultAction
    status_code: int = 200
    payload: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=freeze_mapping, hash=False)
    content_type: str = "application/json"
    process: bool = False
    seconds: float = attrs.field(default=0.0, validator=non_negative)
    word: str | None = None
    changes: Mapping[str, Any] = attrs.field(factory=dict, converter=freeze_any, hash=False)
    remove: tuple[str, ...] = ()

    @classmethod
    def status(
        cls,
        code: int,
        *,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        process: bool = False,
    ) -> Self:
        """Answer with an HTTP error (or any status).

        Args:
            code: The HTTP status code, 100-599.
            body: The response body; default a small JSON error object.
            headers: Extra response headers, e.g. ``{"Retry-After": "2"}``.
            content_type: The ``Content-Type`` of ``body``.
            process: On a create, create (and bill) the task first, then answer
                with this error instead of the normal response.

        Returns:
            The fault.

        Raises:
            ValueError: If ``code`` is not a valid HTTP status code.
        """
        if not 100 <= code <= 599:
            msg = f"HTTP status code must be between 100 and 599, got {code}"
            raise ValueError(msg)
        if body is None:
            error = {
                "message": f"injected HTTP {code}",
                "type": ERROR_TYPES.get(code, "api_error"),
            }
            payload = json.dumps({"error": error}).encode()
        else:
            payload = _as_bytes(body)
        return cls(
            action="respond",
            status_code=code,
            payload=payload,
            headers=headers,
            content_type=content_type,
            process=process,
        )

    @classmethod
    def reset(cls, *, process: bool = False) -> Self:
        """Drop the connection without any HTTP response.

        Note that aiohttp's client transparently retries an idempotent request
        (``GET``) once after a disconnect; inject with ``times=2`` to make a
        reset of a query or an image download visible to such a client.

        Args:
            process: On a create, create (and bill) the task first.

        Returns:
            The fault.
        """
        return cls(action="reset", process=process)

    @classmethod
    def stall(cls, seconds: float, *, process: bool = False) -> Self:
        """Wait (in real time) before answering normally.

        A stall ends early, without processing, when the server closes.

        Args:
            seconds: How long to wait.
            process: Process the request (a create creates its task) before
                waiting rather than after.

        Returns:
            The fault.
        """
        return cls(action="stall", seconds=seconds, process=process)

    @classmethod
    def body(
        cls,
        raw: bytes | str,
        *,
        status: int = 200,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Self:
        """Answer with an arbitrary body, e.g. malformed JSON or a ``code``/``msg`` error.

        Args:
            raw: The response body.
            status: The HTTP status code.
            content_type: The ``Content-Type`` of ``raw``.
            headers: Extra response headers.

        Returns:
            The fault.
        """
        return cls.status(status, body=raw, headers=headers, content_type=content_type)

    @classmethod
    def html(cls, status: int = 502) -> Self:
        """Answer with a reverse proxy's HTML error page.

        Args:
            status: The HTTP status code.

        Returns:
            The fault.
        """
        title = html.escape(f"{status} {reason_phrase(status)}")
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return cls.status(status, body=page, content_type="text/html; charset=utf-8")

    @classmethod
    def status_word(cls, word: str) -> Self:
        """Answer a query normally, but with this status word (queries only).

        Args:
            word: The status word to send, e.g. ``"in_queue"`` or ``"weird"``.

        Returns:
            The fault.
        """
        return cls(action="status_word", word=word)

    @classmethod
    def edit(
        cls, changes: Mapping[str, Any] | None = None, *, remove: Collection[str] = ()
    ) -> Self:
        """Answer normally (a create creates its task), then change the JSON answer.

        The way to meet a provider that answers with odd fields around a real
        task: ``Fault.edit({"created": "yesterday"})``, a ``code``/``msg``
        pair instead of a status (``Fault.edit({"code": 0, "msg": "task
        submitted"}, remove=["status"])``), a query answer naming another
        task (``Fault.edit({"id": "someone-else"})``) or an unusable
        ``image_url``. Error answers (401, 404, ...) are sent unchanged.

        Args:
            changes: Fields to set (any JSON values) in the answer's object.
            remove: Fields to delete from it.

        Returns:
            The fault.
        """
        return cls(action="edit", changes=changes, remove=tuple(remove))

    @classmethod
    def gzip_bomb(
        cls,
        expanded_bytes: int = 200 * 1024 * 1024,
        *,
        status: int = 200,
        content_type: str = "application/json",
    ) -> Self:
        """Answer with a small gzip body that expands to ``expanded_bytes`` of zeros.

        A 200 MiB expansion takes about 200 KB on the wire. A client that caps
        the size of what it reads must count the decoded bytes, not the
        transferred ones.

        Args:
            expanded_bytes: The size once decompressed.
            status: The HTTP status code.
            content_type: The ``Content-Type`` it claims; ``"image/png"`` to
                try an image download's size cap (a JSON type is refused as
                not an image before anything is inflated).

        Returns:
            The fault.

        Raises:
            ValueError: If ``expanded_bytes`` is negative.
        """
        check_non_negative(expanded_bytes, "expanded_bytes")
        return cls.status(
            status,
            body=_gzip_zeros(expanded_bytes),
            headers={"Content-Encoding": "gzip"},
            content_type=content_type,
        )


def _as_bytes(value: bytes | str) -> bytes:
    """Encode text as UTF-8, pass bytes through."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _gzip_zeros(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes, built without holding them in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts: list[bytes] = []
    left = size
    while left > 0:
        parts.append(packer.compress(block[: min(left, len(block))]))
        left -= len(block)
    parts.append(packer.flush())
    return b"".join(parts)
