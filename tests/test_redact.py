"""The redactor finds the key in every spelling a careless provider may echo it in."""

from __future__ import annotations

import html
import json
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banana_async._redact import REDACTED, REDACTED_TEXT, Redactor
from banana_async.errors import shorten

# A key that begins like the marker ("[redacte", "[red0000") would be found
# again in "[redacted]", or its first four characters before a cut: no key
# looks like that, and no redaction could help it.
keys = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40
).filter(lambda key: key[:4] not in REDACTED_TEXT)


def spell(char: str, how: int) -> str:
    """One character of the key, spelled one of the ways providers spell it."""
    code = ord(char)
    forms = [
        char,
        f"\\u{code:04x}",
        f"\\u{code:04X}",
        f"%{code:02X}",
        f"%{code:02x}",
        f"&#{code};",
        f"&#x{code:x};",
        json.dumps(char)[1:-1],  # JSON's own escape where it has one (\\" and \\\\)
        html.escape(char),
    ]
    return forms[how % len(forms)]


@settings(max_examples=300, deadline=None)
@given(key=keys, data=st.data(), before=st.text(max_size=20), after=st.text(max_size=20))
def test_any_mix_of_spellings_is_redacted(
    key: str, data: st.DataObject, before: str, after: str
) -> None:
    ways = data.draw(st.lists(st.integers(0, 8), min_size=len(key), max_size=len(key)))
    echoed = "".join(spell(c, how) for c, how in zip(key, ways, strict=True))
    cleaned = Redactor(key).text(before + echoed + after)
    assert REDACTED in cleaned
    assert key not in cleaned
    assert echoed not in cleaned
    # An error that passes the client twice is cleaned twice (it carries no mark).
    again = Redactor(key).text(cleaned)
    assert key not in again
    assert REDACTED in again


@pytest.mark.parametrize(
    "text",
    [
        "sk-abc/def",
        "sk-abc\\/def",
        quote("sk-abc/def", safe=""),
        "sk-abc&#x2f;def",
        json.dumps({"k": "sk-abc/def"}),
    ],
)
def test_common_echoes(text: str) -> None:
    assert "abc" not in Redactor("sk-abc/def").text(text)


def test_other_text_is_left_alone() -> None:
    redactor = Redactor("sk-abc/def")
    for text in ("sk-ABC/def", "sk-abc/de", "nothing here", "sk-abc%2xdef"):
        assert redactor.text(text) == text
        assert not redactor.found_in(text)


def test_the_redactor_never_shows_its_secret() -> None:
    assert "abc" not in repr(Redactor("sk-abc/def"))
    with pytest.raises(ValueError, match="nothing"):
        Redactor("")


@settings(max_examples=200, deadline=None)
@given(key=keys, cut=st.integers(min_value=5, max_value=60), escaped=st.booleans())
def test_a_piece_of_the_key_left_before_a_cut_is_redacted(
    key: str, cut: int, escaped: bool
) -> None:
    echoed = "".join(f"\\u{ord(c):04x}" for c in key) if escaped else key
    shortened = shorten("x " + echoed, 2 + cut)
    piece = shortened.removeprefix("x ").removesuffix("\u2026")
    cleaned = Redactor(key).text(shortened)
    if len(piece) >= (24 if escaped else 4):  # four characters of the key, at least
        assert piece not in cleaned
        assert REDACTED in cleaned


def test_a_key_under_nested_escapes_hides_the_whole_text() -> None:
    twice = quote(quote("sk-abc/def", safe=""), safe="")
    assert Redactor("sk-abc/def").text(f"next={twice}") == REDACTED_TEXT
    assert Redactor("sk-abc/def").found_in(twice)
    assert Redactor("sk-abc/def").text("next=%2541") == "next=%2541"


def test_a_jwt_sized_key_is_handled() -> None:
    # A pattern nested as deep as the key is long failed to compile for keys
    # of a few hundred characters (RecursionError in BananaClient()).
    key = "eyJ" + "abc/DEF+0123_" * 80
    redactor = Redactor(key)
    cut = shorten("x" * 100 + key, 700)
    cleaned = redactor.text(cut)
    assert key[:20] not in cleaned
    assert cleaned.endswith(REDACTED + "\u2026")
