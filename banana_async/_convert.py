"""The one private cattrs converter, configured in one place.

Never the global converter: users may customise that for their own classes.
Hooks here are deliberately stricter than cattrs' defaults where a lax reading
would hide a broken response (cattrs would turn a dict into a ``str``), and
more tolerant where the providers are known to vary (numbers for ids,
timestamps as numbers or text).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from banana_async._wire import WireTask
from banana_async.models import GenerationRequest


def _structure_str(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    # Some proxies send numeric ids; bools are ints in Python but never ids.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _structure_optional_str(value: Any, _type: Any) -> str | None:
    return None if value is None else _structure_str(value, str)


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
    # Strict text for wire fields only: cattrs' own str hook would turn a dict
    # or null into text, and a global str hook would also catch StrEnums.
    conv.register_structure_hook(
        WireTask,
        make_dict_structure_fn(
            WireTask,
            conv,
            id=override(struct_hook=_structure_str),
            status=override(struct_hook=_structure_optional_str),
            object=override(struct_hook=_structure_optional_str),
            model=override(struct_hook=_structure_optional_str),
            image_url=override(struct_hook=_structure_optional_str),
            error=override(struct_hook=_structure_message),
        ),
    )
    return conv


CONVERTER = make_converter()
