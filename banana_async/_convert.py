"""The one private cattrs converter, configured in one place.

Never the global converter: users may customise that for their own classes.
Hooks here are deliberately stricter than cattrs' defaults where a lax reading
would hide a broken response (cattrs would turn a dict into a task id), and
tolerant wherever a field is not needed to act: a provider's odd ``created``
or ``model`` must never cost a billed task its id.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from banana_async._wire import WireTask
from banana_async.models import GenerationRequest


def _structure_id(value: Any, _type: Any) -> str:
    """A task id: text, or a number some proxies send instead (never a bool)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        # An integral float is an integer id that went through a float; keep
        # its digits. Any other float is kept as written, for a human to see.
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _structure_word(value: Any, _type: Any) -> str | None:
    """A field read only to show or to look up (status, object, model): never fails.

    Scalars become their text; an object or a list becomes its JSON text, so
    a status like ``{"state": 2}`` is kept verbatim (and is an unknown word)
    instead of costing a billed task its id.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _structure_image_url(value: Any, _type: Any) -> str | None:
    """The image URL: a string, or one held in an object or a one-item list.

    Anything else reads as no URL; whether the URL is usable is decided when
    the task is built (a completed task without one is a failed task).
    """
    if isinstance(value, dict):
        value = value.get("url")
    elif isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else None


def _structure_datetime(value: Any, _type: Any) -> datetime:
    if isinstance(value, bool):
        raise TypeError("expected a Unix timestamp, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            parsed = datetime.fromisoformat(text)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if isinstance(value, int | float) and math.isfinite(value):
        seconds = float(value)
        # A few gateways report milliseconds; no task was created after 5138.
        if seconds > 1e11:
            seconds /= 1000.0
        return datetime.fromtimestamp(seconds, UTC)
    raise TypeError(f"expected a Unix timestamp, got {type(value).__name__}")


def _structure_created(value: Any, _type: Any) -> datetime | None:
    """A task's creation time, or None when it cannot be read.

    Nothing the client does depends on it, so ``"yesterday"``, ``true`` or a
    year past 9999 must not cost a billed task its id.
    """
    if value is None:
        return None
    try:
        return _structure_datetime(value, datetime)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _structure_message(value: Any, _type: Any) -> str | None:
    """Read an ``error`` field: a string, or an object with a message in it."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("message", "msg", "detail", "error"):
            inner = value.get(key)
            if isinstance(inner, str):
                return inner
        return str(value)
    return str(value)


def make_converter() -> cattrs.Converter:
    """Build the converter: every hook the package needs, registered here."""
    # Extra keys are ignored: providers add fields (a cost ``amount``) freely.
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(datetime, _structure_datetime)
    # Journals store times as ISO 8601 text, which the hook above reads back.
    conv.register_unstructure_hook(datetime, datetime.isoformat)
    conv.register_unstructure_hook(
        GenerationRequest,
        make_dict_unstructure_fn(
            GenerationRequest,
            conv,
            resolution=override(omit_if_default=True),
            size=override(omit_if_default=True),
        ),
    )
    # Wire records: only the id must be right, and it is read strictly (a dict
    # or null is no id). Every other field is read leniently, because a
    # billed task must never be lost over a field the client does not need.
    # A global str hook would also catch StrEnums, hence overrides here.
    conv.register_structure_hook(
        WireTask,
        make_dict_structure_fn(
            WireTask,
            conv,
            id=override(struct_hook=_structure_id),
            status=override(struct_hook=_structure_word),
            object=override(struct_hook=_structure_word),
            created=override(struct_hook=_structure_created),
            model=override(struct_hook=_structure_word),
            image_url=override(struct_hook=_structure_image_url),
            error=override(struct_hook=_structure_message),
        ),
    )
    return conv


CONVERTER = make_converter()
