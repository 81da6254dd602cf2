"""Edges of what a journal compares and refuses, found by mutation testing.

Each test pins a rule of ``banana_async/journal/_entries.py`` that the rest
of the suite passed through without checking: a mutant that broke it
survived (see "Would the tests notice?" in docs/reliability.md).
"""

from __future__ import annotations

import pytest

import banana_async as ba
from banana_async.journal import Journal, JournalProvider

QUERY = "https://query.example.com/power"
REQUEST = ba.GenerationRequest("a cat")


def _same(one: tuple[str, str, str], other: tuple[str, str, str]) -> bool:
    return JournalProvider(*one).same_as(JournalProvider(*other))


def test_only_case_is_ignored_in_a_host_and_a_dialect_not_other_foldings() -> None:
    # "ß" upper-cases to "SS": a comparison in upper case would take these
    # two hosts (two domains) and these two dialect names for one.
    assert not _same(
        ("nano", "https://straße.example/a", QUERY), ("nano", "https://strasse.example/a", QUERY)
    )
    assert not _same(
        ("straße", "https://h.example/a", QUERY), ("strasse", "https://h.example/a", QUERY)
    )
    assert _same(
        ("NANO", "https://STRASSE.example/a", QUERY), ("nano", "https://strasse.example/a", QUERY)
    )


def test_only_slashes_are_trimmed_from_the_end_of_a_path() -> None:
    assert _same(
        ("nano", "https://h.example/apiX//", QUERY), ("nano", "https://h.example/apiX", QUERY)
    )
    assert not _same(
        ("nano", "https://h.example/apiX", QUERY), ("nano", "https://h.example/api", QUERY)
    )


def test_the_user_part_of_a_url_keeps_its_case() -> None:
    # The host is case-insensitive; a user name is not.
    assert _same(
        ("nano", "https://User@HOST.example/a", QUERY),
        ("nano", "https://User@host.example/a", QUERY),
    )
    assert not _same(
        ("nano", "https://User@host.example/a", QUERY),
        ("nano", "https://user@host.example/a", QUERY),
    )


def test_a_journal_refuses_a_user_part_in_another_case(journal: Journal) -> None:
    journal.bind_provider("nano", "https://User@host.example/a", QUERY)
    journal.bind_provider("nano", "https://User@HOST.example/a/", QUERY)  # the same provider
    with pytest.raises(ba.JournalError, match="another provider"):
        journal.bind_provider("nano", "https://user@host.example/a", QUERY)


@pytest.mark.parametrize("index", [-1, True, 1.0, "0"])
def test_a_bad_index_is_named_in_the_error(journal: Journal, index: object) -> None:
    with pytest.raises(ValueError, match=r"^a journal index must be a non-negative integer, not "):
        journal.record_sending(index, REQUEST)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^a journal index must be "):
        journal.get(index)  # type: ignore[arg-type]
