"""Rates read off the times requests arrived, for the shared-budget tests and the benchmark.

Plain Python (no pytest), beside ``tests/_redis_server.py``, so that
``benchmarks/bench.py`` judges its runs by the same count as
``tests/test_ratelimit_redis.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["busiest_second"]


def busiest_second(times: Sequence[float]) -> int:
    """The most of ``times`` (sorted) within any one second: a sliding window.

    A window holds the times ``t`` with ``start <= t < start + 1``.

    Args:
        times: When the requests arrived, in seconds, earliest first.

    Returns:
        How many of them fall in the busiest such window (0 for none).
    """
    most = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most
