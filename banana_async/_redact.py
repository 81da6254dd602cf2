r"""Keep the API key out of everything shown to people: messages, logs, stored errors.

A provider may echo the key back, and not always verbatim: a PHP backend
writes ``/`` as ``\/`` in JSON, ``\u00XX`` escapes are legal for any
character, a ``Location`` header carries it percent-encoded, an HTML page
carries entities. :class:`Redactor` matches the key with every character in
any of those spellings (mixed freely), so the text is cleaned however it was
encoded, and the same text is cleaned again once decoded.

Only text meant for people is redacted, and only after parsing: a body is
never touched before it is read, or a key that happens to occur inside a task
id would mangle the id.
"""

from __future__ import annotations

import re
from typing import Final

REDACTED: Final = "[redacted]"

# JSON's two-character escapes, for the characters that have one.
_JSON_SHORT: Final = {"/": r"\/", "\\": r"\\", '"': r"\"", "\b": r"\b", "\f": r"\f"}
# HTML's named entities for the characters that have a common one.
_HTML_NAMED: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def _hex(value: int, width: int = 0) -> str:
    """A regex for ``value`` in hex, its letters in either case."""
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in f"{value:0{width}x}")


def _spellings(char: str) -> str:
    """A regex for one character of the key, in any encoding it may come back in."""
    code = ord(char)
    forms = [
        re.escape(char),
        # JSON \uXXXX (a surrogate pair past the BMP).
        "".join(rf"\\u{_hex(unit, 4)}" for unit in _utf16_units(char)),
        # Percent-encoding of each UTF-8 byte.
        "".join(f"%{_hex(byte, 2)}" for byte in char.encode("utf-8")),
        # HTML numeric character references.
        rf"&#0*{code};",
        rf"&#[xX]0*{_hex(code)};",
    ]
    if char in _JSON_SHORT:
        forms.append(re.escape(_JSON_SHORT[char]))
    if char in _HTML_NAMED:
        forms.append(re.escape(_HTML_NAMED[char]))
    if char == " ":
        forms.append(r"\+")
    return "(?:" + "|".join(forms) + ")"


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


class Redactor:
    r"""Replaces a secret, however it is escaped, with :data:`REDACTED`.

    Hex digits in escapes match in either case (``\u002F`` and ``%2f``
    alike); the secret's own characters match exactly.
    """

    __slots__ = ("_pattern",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("nothing to redact")
        self._pattern = re.compile("".join(_spellings(char) for char in secret))

    def __repr__(self) -> str:
        return "Redactor('***')"

    def text(self, text: str) -> str:
        """``text`` with every spelling of the secret replaced."""
        return self._pattern.sub(REDACTED, text)

    def found_in(self, text: str) -> bool:
        """Whether any spelling of the secret occurs in ``text``."""
        return self._pattern.search(text) is not None
