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

import html
import re
from typing import Final
from urllib.parse import unquote

from banana_async.errors import CUT

REDACTED: Final = "[redacted]"
REDACTED_TEXT: Final = "[redacted: this text echoed the API key]"

# JSON's two-character escapes, for the characters that have one.
_JSON_SHORT: Final = {"/": r"\/", "\\": r"\\", '"': r"\"", "\b": r"\b", "\f": r"\f"}
# HTML's named entities for the characters that have a common one.
_HTML_NAMED: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def _hex(value: int, width: int = 0) -> str:
    """A regex for ``value`` in hex, its letters in either case."""
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in f"{value:0{width}x}")


def _spellings(char: str) -> list[str]:
    """Regexes for one character of the key, one per encoding it may come back in."""
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
    return forms


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# How much of the key must be left before a cut to count as a piece of it.
_MIN_PIECE = 4
# What a cut may leave of one escaped character: "\u00", "%2", "&#x2".
_PARTIAL_ESCAPE = re.compile(r"\\u?[0-9a-fA-F]{0,3}|%[0-9a-fA-F]?|&#?[xX]?[0-9a-fA-F]*")
# The marker of a shortened text: this package's (banana_async.errors.CUT),
# as is or as ascii() writes it, and the "..." of libraries such as aiohttp,
# which cuts an over-long response line in its error messages.
_CUT_MARKER = re.compile(re.escape(CUT) + r"|\\u2026|\.\.\.")
# The longest spelling of one character, give or take leading zeros.
_LONGEST_SPELLING = 16
# One round of unescaping: JSON escapes, HTML entities, percent-encoding.
_JSON_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|([/\\\"]))")


def _json_unescape(text: str) -> str:
    if "\\" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        code, char = match.groups()
        return chr(int(code, 16)) if code else char

    return _JSON_ESCAPE.sub(one, text)


def _unescaped(text: str) -> str:
    return unquote(html.unescape(_json_unescape(text)))


class Redactor:
    r"""Replaces a secret, however it is escaped, with :data:`REDACTED`.

    Three nets, from the finest to the coarsest:

    - Each character of the secret in any spelling, mixed freely (hex digits
      of escapes in either case, like ``\u002F`` and ``%2f``; the secret's
      own characters exactly): that occurrence is replaced.
    - A piece of the secret (at least four characters) that a shortened text
      cut off at its end, before the marker ``…``: that piece is replaced.
    - The secret found only after unescaping the text again, up to three
      times (``%252F``, an entity inside percent-encoding, ...): the whole
      text is replaced by :data:`REDACTED_TEXT`, since there is no saying
      which of its characters spell the secret.
    """

    __slots__ = ("_chars", "_pattern")

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("nothing to redact")
        spelled = {char: _spellings(char) for char in set(secret)}
        self._pattern = re.compile(
            "".join("(?:" + "|".join(spelled[char]) + ")" for char in secret)
        )
        # Each spelling of each character on its own, to follow a piece of
        # the secret up to a cut (a pattern of nested optional groups would
        # be as deep as the secret is long, past what re compiles for a JWT).
        compiled = {char: [re.compile(form) for form in forms] for char, forms in spelled.items()}
        self._chars = [compiled[char] for char in secret]

    def __repr__(self) -> str:
        return "Redactor('***')"

    def text(self, text: str) -> str:
        """``text`` with every spelling of the secret replaced (see the class)."""
        cleaned = self._pattern.sub(REDACTED, text)
        for start, end in reversed(self._pieces_before_cuts(cleaned)):
            cleaned = cleaned[:start] + REDACTED + cleaned[end:]
        return REDACTED_TEXT if self._hidden_in(cleaned) else cleaned

    def found_in(self, text: str) -> bool:
        """Whether the secret, or a piece of it before a cut, occurs in ``text``."""
        return (
            self._pattern.search(text) is not None
            or bool(self._pieces_before_cuts(text))
            or self._hidden_in(text)
        )

    def _pieces_before_cuts(self, text: str) -> list[tuple[int, int]]:
        """Where a piece of the secret runs up to a cut marker (start, end)."""
        spans: list[tuple[int, int]] = []
        for marker in _CUT_MARKER.finditer(text):
            end = marker.start()
            window = max(0, end - _LONGEST_SPELLING * len(self._chars))
            # The earliest start wins: the longest piece of the secret.
            for start in range(window, end):
                if self._spells_a_piece(text, start, end):
                    spans.append((start, end))
                    break
        return spans

    def _spells_a_piece(self, text: str, start: int, end: int) -> bool:
        """Whether ``text[start:end]`` spells the secret's first characters (four at least).

        Every spelling of every character is tried (a backslash of the
        secret and the backslash that starts an escape look alike), and the
        text may end inside an escape the cut broke off.
        """
        chars = self._chars
        needed = min(_MIN_PIECE, len(chars))
        todo = [(start, 0)]
        tried: set[tuple[int, int]] = set()
        while todo:
            position, count = todo.pop()
            if (position, count) in tried:
                continue
            tried.add((position, count))
            if count >= needed and (
                position == end or _PARTIAL_ESCAPE.fullmatch(text, position, end) is not None
            ):
                return True
            if position >= end or count >= len(chars):
                continue
            for form in chars[count]:
                match = form.match(text, position, end)
                if match is not None and match.end() > position:
                    todo.append((match.end(), count + 1))
        return False

    def _hidden_in(self, text: str) -> bool:
        for _ in range(3):
            decoded = _unescaped(text)
            if decoded == text:
                return False
            if self._pattern.search(decoded):
                return True
            text = decoded
        return False
