"""A provider's rate limit for the fake server: a token bucket per API key."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["LIMITED_KINDS", "Bucket", "RequestBudget", "whole_seconds"]


def _finite(value: object) -> bool:
    """Whether ``value`` is a finite int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_rate(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Attrs validator: a finite number of tokens per second above zero."""
    if not (_finite(value) and value > 0):
        msg = f"{attribute.name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)


def _bucket_size(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """Attrs validator: ``None`` or a finite number of tokens of at least one."""
    # Below one token no request could ever pass.
    if value is not None and not (_finite(value) and value >= 1):
        msg = f"{attribute.name} must be None or a finite number >= 1, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class RequestBudget:
    """A provider's rate limit for :class:`FakeBananaServer`: a token bucket per API key.

    Each distinct ``Authorization`` header value has a bucket of its own
    (requests without the header share one). A bucket starts full, holds at
    most :attr:`capacity` tokens and refills at ``rate`` tokens per second
    of the server's clock. Every create and status query takes one token; a
    request that finds less than one is answered ``429`` and is not processed
    (a create creates no task). Image downloads, like a separate image host,
    are never limited.

    The budget is checked before injected faults: a request it refuses
    consumes no :class:`Fault`, and a request it lets through has paid its
    token whatever a fault then does to it.

    Attributes:
        rate: Tokens added per second (the sustained requests per second).
        burst: The most tokens a bucket holds (requests that can arrive at
            once after a quiet spell); ``None`` means ``max(1, rate)``.
        retry_after: Whether a ``429`` carries a ``Retry-After`` header with
            the whole seconds until a token is available (at least 1, as real
            servers send it). Without it the client must guess.
    """

    rate: float = attrs.field(validator=_positive_rate)
    burst: float | None = attrs.field(default=None, validator=_bucket_size)
    retry_after: bool = True

    @property
    def capacity(self) -> float:
        """The most tokens a bucket holds (``burst``, or ``max(1, rate)`` when unset)."""
        return max(1.0, self.rate) if self.burst is None else float(self.burst)


LIMITED_KINDS = frozenset({"create", "query"})
"""The requests a :class:`RequestBudget` limits: the API's, not image downloads."""

# Float arithmetic may leave an exactly refilled token at 0.99999...: a
# request on time must not be refused for that.
_TOKEN_SLACK = 1e-9


@attrs.define
class Bucket:
    """One key's tokens, as of ``stamp`` on the server's clock."""

    tokens: float
    stamp: float

    def refill(self, now: float, budget: RequestBudget) -> None:
        """Add what ``budget`` earned since ``stamp``, up to its capacity."""
        if now > self.stamp:
            self.tokens = min(budget.capacity, self.tokens + (now - self.stamp) * budget.rate)
            self.stamp = now

    def take(self, now: float, budget: RequestBudget) -> float | None:
        """Refill, then take one token.

        Returns:
            ``None`` when a token was taken, else the seconds until one is back.
        """
        self.refill(now, budget)
        if self.tokens >= 1.0 - _TOKEN_SLACK:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / budget.rate


def whole_seconds(wait: float) -> str:
    """A ``Retry-After`` value for a wait of ``wait`` seconds.

    Whole seconds, rounded up so that a client obeying it finds the token
    there; never 0, which some clients read as "no wait".
    """
    return str(max(1, math.ceil(wait - _TOKEN_SLACK)))
