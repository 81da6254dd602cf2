"""banana_async: an asyncio-first client for the Nano Banana image-generation API.

Create a task, poll it until it is done, get the image URL; in two dialects
(``nano`` and ``navo``), with typed errors and a fake provider for tests::

    import banana_async as ba

    async with ba.BananaClient(dialect="nano") as client:
        task = await client.generate("a cat on a windowsill", size="16:9")
        print(task.image_url)
"""

from banana_async._polling import Clock, SystemClock
from banana_async._version import __version__
from banana_async.client import API_KEY_ENV, BananaClient
from banana_async.dialects import (
    NANO,
    NAVO,
    Dialect,
    HTTPRequest,
    HTTPResponse,
    ResolutionIgnoredWarning,
    get_dialect,
    parse_body,
)
from banana_async.download import DEFAULT_MAX_IMAGE_BYTES
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
    Outcome,
    Resolution,
    Task,
    TaskStatus,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MAX_IMAGE_BYTES",
    "NANO",
    "NAVO",
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
    "HTTPRequest",
    "HTTPResponse",
    "InvalidRequestError",
    "Journal",
    "JournalEntry",
    "JournalError",
    "Model",
    "NotFoundError",
    "Outcome",
    "ProviderError",
    "RateLimitError",
    "Resolution",
    "ResolutionIgnoredWarning",
    "ResponseValidationError",
    "ServerError",
    "SystemClock",
    "Task",
    "TaskFailedError",
    "TaskStatus",
    "TaskTimeoutError",
    "UnconfirmedCreateError",
    "__version__",
    "get_dialect",
    "parse_body",
]
