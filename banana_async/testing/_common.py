"""Value checks and converters that the fake's attrs classes share."""

from __future__ import annotations

import http
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    import attrs

__all__ = ["check_non_negative", "freeze_any", "freeze_mapping", "non_negative", "reason_phrase"]


def freeze_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    """Copy a mapping into a read-only view (``None`` becomes empty)."""
    return types.MappingProxyType(dict(value or {}))


def freeze_any(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Copy a mapping of JSON values into a read-only view (``None`` becomes empty)."""
    return types.MappingProxyType(dict(value or {}))


def reason_phrase(code: int) -> str:
    """The standard reason phrase of an HTTP status code, or ``"Error"``."""
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def check_non_negative(value: float, name: str) -> None:
    """Refuse a number below zero, or NaN (which no comparison would stop later).

    Raises:
        ValueError: ``{name} must be >= 0, got {value!r}``.
    """
    if not value >= 0:
        msg = f"{name} must be >= 0, got {value!r}"
        raise ValueError(msg)


def non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """Attrs validator: a number of seconds that is ``None`` or at least zero."""
    if value is not None:
        check_non_negative(value, attribute.name)
