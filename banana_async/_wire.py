"""Wire records: the providers' JSON shapes, with the providers' field names.

Both dialects share these shapes today (see ``shared/api/README.md``); a
dialect that diverged would get records of its own here. Public models never
carry wire names: :mod:`banana_async.dialects` maps these to
:class:`~banana_async.Task`.
"""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen
class WireTask:
    """A create or query response body, after one level of ``data`` is unwrapped."""

    id: str
    status: str | None = None
    object: str | None = None
    created: datetime | None = None
    model: str | None = None
    image_url: str | None = None
    error: str | None = None
