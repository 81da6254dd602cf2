"""Journal.bind_provider: a journal's task ids belong to one provider."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import banana_async as ba
from banana_async.journal import EntryState, Journal, JournalEntry, JournalProvider

CREATE = "https://create.example.com/api"
QUERY = "https://query.example.com/power"
REQUEST = ba.GenerationRequest("a cat")


def test_first_bind_records_the_provider(journal: Journal, path: Path) -> None:
    before = journal.provider
    assert before is None
    journal.bind_provider("nano", CREATE, QUERY)
    assert journal.provider == JournalProvider("nano", CREATE, QUERY)
    journal.close()
    with Journal.open(path) as again:
        assert again.provider == JournalProvider("nano", CREATE, QUERY)


def test_the_same_provider_is_accepted(journal: Journal, path: Path) -> None:
    journal.bind_provider("nano", CREATE, QUERY)
    journal.bind_provider("nano", CREATE, QUERY)
    journal.close()
    with Journal.open(path) as again:
        again.bind_provider("nano", CREATE, QUERY)
        assert again.provider == JournalProvider("nano", CREATE, QUERY)


@pytest.mark.parametrize(
    ("dialect", "create", "query", "differs"),
    [
        ("navo", CREATE, QUERY, "navo"),
        ("nano", CREATE, "https://other.example.com/power", "other.example.com"),
        ("nano", "https://other.example.com/api", QUERY, "other.example.com"),
        ("nano", CREATE, "https://query.example.com/other", "/other"),
        ("nano", CREATE.replace("https", "http"), QUERY, "http://create"),
    ],
)
def test_another_provider_is_refused(
    journal: Journal, path: Path, dialect: str, create: str, query: str, differs: str
) -> None:
    journal.bind_provider("nano", CREATE, QUERY)
    journal.record_sending(0, REQUEST)
    journal.close()
    with Journal.open(path) as again:  # a later run, against another provider
        with pytest.raises(ba.JournalError) as info:
            again.bind_provider(dialect, create, query)
        message = str(info.value)
        assert not isinstance(info.value, ValueError)
        assert info.value.path == str(path)
        assert str(path) in message
        assert "another provider" in message
        # Both sides are named: what was recorded, and what was given.
        assert re.search(rf"recorded for 'nano' \(create {CREATE}, query {QUERY}\)", message)
        assert f"'{dialect}' (create {create}, query {query})" in message
        assert differs in message
        # Nothing changed, and the journal is still usable.
        assert again.provider == JournalProvider("nano", CREATE, QUERY)
        assert again.counts()[EntryState.SENDING] == 1
        again.record_error(1, REQUEST, ValueError("still writable"))


def test_refused_in_the_same_open_too(journal: Journal) -> None:
    journal.bind_provider("nano", CREATE, QUERY)
    with pytest.raises(ba.JournalError, match="another provider"):
        journal.bind_provider("navo", CREATE, QUERY)


@pytest.mark.parametrize(
    ("dialect", "create", "query"),
    [
        ("nano", CREATE + "/", QUERY + "//"),
        ("NANO", "HTTPS://Create.Example.COM/api", "https://QUERY.example.com/power/"),
        (" nano ", CREATE, QUERY),
    ],
)
def test_equivalent_spellings_are_accepted(
    journal: Journal, dialect: str, create: str, query: str
) -> None:
    journal.bind_provider("nano", CREATE, QUERY)
    journal.bind_provider(dialect, create, query)
    assert journal.provider == JournalProvider("nano", CREATE, QUERY)  # as first recorded


def test_spelling_recorded_first_is_kept(journal: Journal) -> None:
    journal.bind_provider("nano", "https://Host.example/x/", "https://host.example/y")
    journal.bind_provider("nano", "https://host.example/x", "https://HOST.example/y/")
    assert journal.provider == JournalProvider(
        "nano", "https://Host.example/x/", "https://host.example/y"
    )


def test_path_case_still_matters(journal: Journal) -> None:
    journal.bind_provider("nano", "https://host.example/X", QUERY)
    with pytest.raises(ba.JournalError, match="another provider"):
        journal.bind_provider("nano", "https://host.example/x", QUERY)


def test_journal_from_before_provider_binding_is_accepted(path: Path) -> None:
    """A version-1 journal without a provider: the first bind records one."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE entries (
                idx INTEGER PRIMARY KEY CHECK (idx >= 0), state TEXT NOT NULL,
                request TEXT, raw_input TEXT, task_id TEXT, task TEXT, error TEXT,
                error_type TEXT, path TEXT, updated_at REAL NOT NULL
            );
            INSERT INTO meta VALUES ('application', 'banana_async.journal');
            INSERT INTO meta VALUES ('schema_version', '1');
            INSERT INTO meta VALUES ('fingerprint', 'sha256:abc');
            PRAGMA journal_mode=WAL;
            """
        )
        db.execute(
            "INSERT INTO entries (idx, state, request, updated_at) VALUES (0, 'sending', ?, 1.0)",
            ('{"image_urls":[],"model":"nano-banana-2","prompt":"a cat"}',),
        )
        db.commit()
    with Journal.open(path) as journal:
        assert journal.provider is None
        journal.bind_provider("navo", CREATE, QUERY)
        assert journal.get(0) == JournalEntry(0, EntryState.SENDING, REQUEST, updated_at=1.0)
        assert journal.fingerprint == "sha256:abc"
    with Journal.open(path) as journal:
        assert journal.provider == JournalProvider("navo", CREATE, QUERY)
        with pytest.raises(ba.JournalError, match="another provider"):
            journal.bind_provider("nano", CREATE, QUERY)


def test_damaged_provider_record_is_reported(journal: Journal, path: Path) -> None:
    journal.bind_provider("nano", CREATE, QUERY)
    journal.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE meta SET value = '{\"dialect\": 3' WHERE key = 'provider'")
        db.commit()
    with Journal.open(path) as again, pytest.raises(ba.JournalError, match="damaged"):
        again.bind_provider("nano", CREATE, QUERY)


def test_closed_journal_cannot_bind(path: Path) -> None:
    journal = Journal.open(path)
    journal.close()
    with pytest.raises(ValueError, match="is closed"):
        journal.bind_provider("nano", CREATE, QUERY)
