"""Where :class:`Outcome` and :data:`BatchInput` were first defined; kept for imports.

Both live in :mod:`banana_async.models` now (and at the top of the package);
``from banana_async.batch import Outcome`` keeps working. The batch engine
itself is private (``banana_async._batch``).
"""

from banana_async.models import BatchInput, Outcome

__all__ = ["BatchInput", "Outcome"]
