"""Every error ``banana_async`` raises, in one tree.

Catch :class:`BananaError` to catch them all. No aiohttp, JSON or cattrs
exception ever escapes the client: each is mapped to one of these. The
builtin base :class:`ValueError` on :class:`InvalidRequestError` is there so
that code validating user input can catch it the usual way.

::

    BananaError
    ├── InvalidRequestError (also ValueError)  bad input, raised before any HTTP
    ├── APIConnectionError                     no HTTP response came back
    │   └── APITimeoutError                    ... because a timeout fired
    ├── APIStatusError                         an HTTP error status (status_code, body)
    │   ├── BadRequestError                    400, 422
    │   ├── AuthenticationError                401, 403
    │   ├── NotFoundError                      404
    │   ├── RateLimitError                     429 (retry_after)
    │   └── ServerError                        5xx
    ├── ProviderError                          a 200 whose body is an error (code, msg)
    ├── ResponseValidationError                a body that is not a task (body)
    ├── TaskFailedError                        the task ended ``failed`` (task, error)
    ├── TaskTimeoutError                       the deadline passed (task: the last seen)
    ├── DownloadError                          an image could not be saved (url, reason)
    ├── UnconfirmedCreateError                 a journaled create may or may not exist
    └── JournalError                           a journal that cannot be used (damaged,
                                               foreign, locked) or failed in a batch
                                               (a full disk; unrecorded: task ids it lacks)

Messages never contain the API key: the client redacts it, in any spelling a
provider may echo it in, from every message, body and header an exception
carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from banana_async.models import Task

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BananaError",
    "DownloadError",
    "InvalidRequestError",
    "JournalError",
    "NotFoundError",
    "ProviderError",
    "RateLimitError",
    "ResponseValidationError",
    "ServerError",
    "SharedBudgetError",
    "TaskFailedError",
    "TaskTimeoutError",
    "UnconfirmedCreateError",
]

# Bodies are kept on exceptions for debugging; a proxy's HTML page can be
# large, so the text shown in messages is cut to this many characters.
_MESSAGE_BODY_LIMIT = 200

CUT = "\u2026"
"""Ends every text this package shortens ("…").

One marker, always the same, lets the client find a cut that fell inside
an echoed API key and redact the part of the key left before it.
"""


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in :data:`CUT` if cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + CUT


def _excerpt(text: str, limit: int = _MESSAGE_BODY_LIMIT) -> str:
    return shorten(" ".join(text.split()), limit)


class BananaError(Exception):
    """Base class of every error raised by ``banana_async``."""


class InvalidRequestError(BananaError, ValueError):
    """The request is invalid; raised before anything is sent."""


class APIConnectionError(BananaError):
    """No HTTP response was received (refused, reset, DNS, TLS, ...).

    Attributes:
        request_sent: False only when the request certainly never reached the
            provider (the connection was never established). A create that
            fails with ``request_sent=True`` may have been processed and
            billed; the client never re-sends it on its own.
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError):
    """A per-request timeout fired before the response was complete."""


class APIStatusError(BananaError):
    """The provider answered with an HTTP error status.

    Attributes:
        status_code: The HTTP status.
        body: The response body as text (API key redacted), possibly empty.
        headers: The response headers.
        retry_after: Seconds the provider asked us to wait (``Retry-After``,
            as seconds or an HTTP date), or None if it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str = "",
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.headers = dict(headers or {})
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400 or 422: the provider rejected the request."""


class AuthenticationError(APIStatusError):
    """401 or 403: the API key is missing, wrong or not allowed."""


class NotFoundError(APIStatusError):
    """404: no such task (or a wrong base URL)."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` says for how long, if known."""


class ServerError(APIStatusError):
    """A 5xx status: the provider (or a proxy in front of it) failed."""


class ProviderError(BananaError):
    """The provider answered 200 with an error body such as ``{"code", "msg"}``.

    Attributes:
        code: The provider's error code, as text (may be empty).
        msg: The provider's message.
        body: The whole body as text.
        task_id: The task id the body carried beside the error, or None. A
            create answered this way may have created (and billed) that
            task: a journaled batch records it as unconfirmed, with its id.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        msg: str = "",
        body: str = "",
        task_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.msg = msg
        self.body = body
        self.task_id = task_id


class ResponseValidationError(BananaError):
    """A response body could not be read as a task.

    Attributes:
        body: The body as text (API key redacted).
        status_code: The HTTP status it came with.
        task_id: A task id the body carried although it was unusable (a lone
            surrogate in it, say), or None. A create answered this way
            created a task that cannot be polled: the id is kept for a human.
    """

    def __init__(
        self, message: str, *, body: str = "", status_code: int = 200, task_id: str | None = None
    ) -> None:
        # The status tells a proxy's page (a 2xx from a gateway) from the provider's answer.
        status = f"HTTP {status_code}"
        super().__init__(message if status in message else f"{message} ({status})")
        self.body = body
        self.status_code = status_code
        self.task_id = task_id


class TaskFailedError(BananaError):
    """The task reached the ``failed`` status.

    Attributes:
        task: The failed task, as last returned by the provider.
        error: The provider's failure message (may be empty).
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.error = task.error or ""
        reason = f": {_excerpt(self.error)}" if self.error else ""
        super().__init__(f"task {task.id} failed{reason}")


class TaskTimeoutError(BananaError):
    """The deadline of a ``wait`` or ``generate`` passed before the task finished.

    Attributes:
        task: The last task seen (its status is the last one observed), or
            None when no status was ever received.
        task_id: The id of the task that was being waited for.
        timeout: The deadline in seconds.
    """

    def __init__(self, task_id: str, timeout: float, task: Task | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.task = task
        seen = f"; last status {task.raw_status!r}" if task is not None else ""
        super().__init__(f"task {task_id} did not finish within {timeout:g} s{seen}")


class DownloadError(BananaError):
    """An image could not be downloaded and saved.

    Raised for what is wrong with the image itself (not an image, too large,
    no URL, an unsafe URL); HTTP and connection failures of the image host
    raise the usual :class:`APIStatusError` and :class:`APIConnectionError`.

    Attributes:
        url: The image URL (None when the task has none).
        reason: A short machine-readable reason, such as ``not_an_image``,
            ``too_large``, ``no_image_url`` or ``bad_url``.
    """

    def __init__(self, message: str, *, url: str | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class UnconfirmedCreateError(BananaError):
    """A create was in flight when a journaled batch stopped; its fate is unknown.

    The provider may have created (and billed) the task, but its id never
    reached the journal. The batch does not send it again unless told to.

    Attributes:
        index: The input's position in the batch.
    """

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


class JournalError(BananaError):
    """A journal cannot be used, or failed while its batch ran (a full disk, ...).

    Raised before anything is sent for a journal that cannot be used at all:
    a file that is not a journal, a damaged one, one written by a newer
    ``banana_async``, one in use by another run (the lock that keeps a batch
    from being run, and billed, twice), or one that belongs to another
    provider or another batch. Deliberately not a :class:`ValueError` (these
    were :class:`InvalidRequestError` before): none of these is a bad
    argument value, and ``except ValueError`` around input handling must not
    swallow "in use", which guards against paying twice.

    While a batch runs, it stops creating tasks at the first failed write,
    lets the creates already sent come back, and raises this. Tasks recorded before
    the failure are safe: a resumed run polls them. Tasks created after it
    are not in the journal: their ids are here, logged at ERROR too, so that
    nothing paid for is unknowable.

    Attributes:
        path: The journal's file name.
        unrecorded: Input index -> task id, for every task the provider
            created (or may have created, for an error that carried an id)
            whose id the journal lacks.
    """

    def __init__(
        self, message: str, *, path: str = "", unrecorded: Mapping[int, str] | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.unrecorded = dict(unrecorded or {})


class SharedBudgetError(BananaError):
    """The request budget shared through Redis (``rate_limit_url``) cannot be reached.

    Raised when the client opens (or, for a
    :class:`~banana_async.ratelimit.redis.RedisRateLimiter` given as
    ``rate_limiter``, by its first request) if Redis has not answered once
    yet: a wrong URL, nothing listening, TLS against a plain server, a
    missing socket. Nothing was sent to the API. Running on anyway would
    spend the key's budget once per process, so it takes a decision:
    ``allow_unshared=True`` (``--allow-unshared``) goes on with this
    process's own limiter instead, as a client whose Redis goes away
    mid-run does. The message names the URL without its password.

    Attributes:
        url: The Redis URL, without its password.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url
