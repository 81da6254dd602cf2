"""Request budgets: who may send a request, and when.

Every request of a :class:`~banana_async.BananaClient` to the API (creates
and status queries, not image downloads) asks a :class:`RateLimiter` for a
turn first, tells it afterwards whether the provider answered 429, and, when
it did, asks it to pause every request. The client knows nothing else about
budgets, so a limiter shared by many processes (through Redis, say) plugs in
without touching the client.

:class:`AdaptiveRateLimiter` is the in-process default: it learns the
provider's limit from its 429s, serves creates before status queries while
the budget binds, and applies a configured ``requests_per_second`` as a hard
cap on top.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from banana_async.ratelimit._adaptive import DEFAULT_PAUSE, AdaptiveRateLimiter

__all__ = ["DEFAULT_PAUSE", "AdaptiveRateLimiter", "RateLimiter", "RequestKind"]

# Documented (and cross-referenced) where users import it from.
AdaptiveRateLimiter.__module__ = __name__

#: What a request is, for a limiter that serves some kinds before others.
RequestKind = Literal["create", "query"]


@runtime_checkable
class RateLimiter(Protocol):
    """What the client needs from a request budget.

    The client calls, for every request to the API:

    1. ``turn = await acquire(kind, timeout=...)`` before sending; ``None``
       means no turn came within ``timeout`` and the request is not sent;
    2. ``record(turn, limited=...)`` once an answer arrived (``limited`` is
       True for a 429);
    3. after a 429, ``await pause(seconds)`` with the provider's
       ``Retry-After`` (capped), or ``None`` when it gave none.

    A limiter is used from one event loop at a time.
    """

    async def acquire(self, kind: RequestKind, *, timeout: float | None = None) -> float | None:
        """Wait for this request's turn and return a token for :meth:`record`.

        Args:
            kind: ``"create"`` or ``"query"``.
            timeout: Most seconds to wait; None waits as long as it takes.

        Returns:
            An opaque token (the limiter's time of the turn), or None when the
            turn would not come within ``timeout``; nothing is spent then.
        """
        ...

    def record(self, turn: float, *, limited: bool) -> None:
        """Report how the request sent at ``turn`` was answered (429 or not)."""
        ...

    async def pause(self, seconds: float | None) -> None:
        """Hold every request for ``seconds`` from now (None: the limiter decides)."""
        ...
