"""banana_async: an asyncio-first client for the Nano Banana image-generation API.

Create a task, poll it until it is done, get the image URL; in two dialects
(``nano`` and ``navo``), with typed errors and a fake provider for tests::

    import banana_async as ba

    async with ba.BananaClient(dialect="nano") as client:
        task = await client.generate("a cat on a windowsill", size="16:9")
        print(task.image_url)

Without an event loop of your own (a script, threads, a notebook),
:class:`SyncBananaClient` does the same, blocking.
"""

import importlib
import warnings
from typing import Any

from banana_async._logging import install_from_env as _install_log_handler
from banana_async._polling import Clock
from banana_async._version import __version__
from banana_async.client import API_KEY_ENV, RATE_LIMIT_URL_ENV, BananaClient
from banana_async.dialects import (
    NANO,
    NAVO,
    Dialect,
    ResolutionIgnoredWarning,
    get_dialect,
)
from banana_async.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BananaError,
    DownloadError,
    InvalidRequestError,
    JournalError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
    SharedBudgetError,
    TaskFailedError,
    TaskTimeoutError,
    UnconfirmedCreateError,
)
from banana_async.journal import EntryState, Journal, JournalEntry
from banana_async.models import (
    AspectRatio,
    BatchInput,
    GenerationRequest,
    Model,
    OnStatus,
    Outcome,
    Resolution,
    Task,
    TaskEvent,
    TaskStatus,
)
from banana_async.sync import SyncBananaClient

# BANANA_LOG=info|debug shows the library's log on stderr, without code.
_install_log_handler()

__all__ = [
    "API_KEY_ENV",
    "NANO",
    "NAVO",
    "RATE_LIMIT_URL_ENV",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AspectRatio",
    "AuthenticationError",
    "BadRequestError",
    "BananaClient",
    "BananaError",
    "BatchInput",
    "Clock",
    "Dialect",
    "DownloadError",
    "EntryState",
    "GenerationRequest",
    "InvalidRequestError",
    "Journal",
    "JournalEntry",
    "JournalError",
    "Model",
    "NotFoundError",
    "OnStatus",
    "Outcome",
    "ProviderError",
    "RateLimitError",
    "Resolution",
    "ResolutionIgnoredWarning",
    "ResponseValidationError",
    "ServerError",
    "SharedBudgetError",
    "SyncBananaClient",
    "Task",
    "TaskEvent",
    "TaskFailedError",
    "TaskStatus",
    "TaskTimeoutError",
    "UnconfirmedCreateError",
    "__version__",
    "get_dialect",
]

# Names that left the top level (issue #8), each still importable from its
# module; importing one from here keeps working, with a DeprecationWarning.
_MOVED = {
    "DEFAULT_MAX_IMAGE_BYTES": "banana_async.download",
    "HTTPRequest": "banana_async.dialects",
    "HTTPResponse": "banana_async.dialects",
    "SystemClock": "banana_async.client",
    "parse_body": "banana_async.dialects",
}


def __getattr__(name: str) -> Any:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'banana_async' has no attribute {name!r}")
    warnings.warn(
        f"banana_async.{name} is deprecated; import it from {home}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)
