"""Text that is not valid UTF-8 (lone surrogates) in journal writes.

JSON from a provider may hold ``"\\ud800"``, which decodes to a Python string
that SQLite's driver cannot encode. Every write must take it; the ``task``
column round-trips it exactly, the plain text columns store it escaped.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

import banana_async as ba
from banana_async._convert import CONVERTER
from banana_async.journal import EntryState, Journal, canonical_request
from banana_async.journal._entries import dumps_task

from .conftest import reopened

BAD_ID = "bad\ud800"
REQUEST = ba.GenerationRequest("a cat")


def column(path: Path, name: str, index: int = 0) -> object:
    with closing(sqlite3.connect(path)) as db:
        row = db.execute(f"SELECT {name} FROM entries WHERE idx = ?", (index,)).fetchone()
    return row[0]


def test_task_id_with_a_lone_surrogate_round_trips(journal: Journal, path: Path) -> None:
    journal.record_sending(0, REQUEST)
    queued = ba.Task(BAD_ID, ba.TaskStatus.QUEUED, "queued", model="m\udc80")
    created = journal.record_created(0, queued)
    assert created.task == queued
    assert created.task_id == BAD_ID
    assert journal.get(0) == created

    done = ba.Task(BAD_ID, ba.TaskStatus.COMPLETED, "done", image_url="https://x/\ud83d.png")
    finished = journal.record_finished(0, done)  # the same id: no "already has task"
    assert finished.state is EntryState.COMPLETED
    assert journal.get(0) == finished
    journal.close()

    [entry] = reopened(path)
    assert entry == finished
    assert entry.task is not None
    assert entry.task.id == BAD_ID
    assert entry.task_id == BAD_ID
    assert entry.task.image_url == "https://x/\ud83d.png"
    # On disk: ASCII JSON in the task column, the id escaped in task_id.
    task_json = column(path, "task")
    assert isinstance(task_json, str)
    assert task_json.isascii()
    assert json.loads(task_json)["id"] == BAD_ID
    assert column(path, "task_id") == "bad\\ud800"


def test_failed_task_message_with_a_lone_surrogate(journal: Journal, path: Path) -> None:
    journal.record_sending(0, REQUEST)
    failed = ba.Task(BAD_ID, ba.TaskStatus.FAILED, "failed", error="refused \udc80")
    entry = journal.record_finished(0, failed)
    assert entry.task == failed  # exact, from the JSON column
    assert entry.error == "refused \\udc80"  # plain text column: escaped
    assert journal.get(0) == entry
    journal.close()
    assert reopened(path) == [entry]


def test_error_and_raw_input_with_lone_surrogates(journal: Journal, path: Path) -> None:
    raw = '{"prompt": "\ud800"}'
    entry = journal.record_error(0, None, ValueError("bad \udfff here"), raw_input=raw)
    assert entry.state is EntryState.ERROR
    assert entry.error == "bad \\udfff here"
    assert entry.raw_input == '{"prompt": "\\ud800"}'
    assert journal.get(0) == entry
    # The batch compares raw inputs with what it recorded: the same text matches.
    assert journal.request_matches(0, None, raw_input=raw)
    assert not journal.request_matches(0, None, raw_input='{"prompt": "\udc00"}')
    journal.close()
    assert reopened(path) == [entry]
    with Journal.open(path) as again:  # still an ERROR entry that may be sent again
        assert again.request_matches(0, None, raw_input=raw)
        assert again.record_sending(0, REQUEST).state is EntryState.SENDING


def test_unconfirmed_and_noted_errors_with_lone_surrogates(journal: Journal, path: Path) -> None:
    journal.record_sending(0, REQUEST)
    unconfirmed = journal.record_unconfirmed(0, REQUEST, ConnectionResetError("reset \ud800"))
    assert unconfirmed.error == "reset \\ud800"
    journal.record_sending(1, REQUEST)
    journal.record_created(1, ba.Task(BAD_ID, ba.TaskStatus.QUEUED, "queued"))
    noted = journal.note_error(1, TimeoutError("slow \udbff"))
    assert noted.error == "slow \\udbff"
    assert noted.state is EntryState.CREATED
    assert noted.task_id == BAD_ID
    assert [journal.get(0), journal.get(1)] == [unconfirmed, noted]
    journal.close()
    assert reopened(path) == [unconfirmed, noted]


def test_download_path_with_a_lone_surrogate(journal: Journal, path: Path) -> None:
    # On POSIX, a file name that is not UTF-8 decodes to lone surrogates.
    journal.record_sending(0, REQUEST)
    journal.record_finished(0, ba.Task(BAD_ID, ba.TaskStatus.COMPLETED, "done"))
    entry = journal.record_download(0, Path("out") / "img-\udcff.png")
    assert entry.path == str(Path("out") / "img-\\udcff.png")
    assert entry.error is None
    assert journal.get(0) == entry
    journal.close()
    assert reopened(path) == [entry]


def test_valid_text_is_stored_unchanged(journal: Journal, path: Path) -> None:
    """Only what cannot be encoded is escaped: accents, emoji and backslashes stay."""
    text = "tâche ✓ 🍌 C:\\out"
    journal.record_error(0, None, ValueError(text), raw_input=text)
    entry = journal.record_error(0, None, ValueError(text))
    assert (entry.error, entry.raw_input) == (text, text)
    journal.record_sending(1, REQUEST)
    journal.record_finished(1, ba.Task(text, ba.TaskStatus.COMPLETED, "done"))
    downloaded = journal.record_download(1, text)
    assert (downloaded.task_id, downloaded.path) == (text, text)
    journal.close()
    assert reopened(path) == [entry, downloaded]
    assert column(path, "task_id", 1) == text


def test_task_written_without_ascii_escapes_still_loads(path: Path) -> None:
    """Journals written before ensure_ascii=True hold raw UTF-8 in the task column."""
    with Journal.open(path) as journal:
        journal.record_sending(0, REQUEST)
        journal.record_created(0, ba.Task("tâche-✓", ba.TaskStatus.QUEUED, "queued"))
    old_style = json.dumps(json.loads(str(column(path, "task"))), ensure_ascii=False)
    assert "tâche-✓" in old_style
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE entries SET task = ? WHERE idx = 0", (old_style,))
        db.commit()
    [entry] = reopened(path)
    assert entry.task is not None
    assert entry.task.id == "tâche-✓"


def test_canonical_request_keeps_non_ascii_text() -> None:
    """Unchanged on purpose: existing journals compare inputs by these exact texts."""
    assert canonical_request(ba.GenerationRequest("un chat é 🍌")) == (
        '{"image_urls":[],"model":"nano-banana-2","prompt":"un chat é 🍌"}'
    )


_texts = st.none() | st.text(st.characters(codec=None), max_size=30)
# Reference image URLs that validation accepts, with quotes, backslashes and non-ASCII.
_URL = r'\Ahttps?://[a-z]{1,8}\.example/[a-zA-Z0-9é🍌_./"\\-]{0,12}\Z'
_words = st.text(st.characters(codec=None), min_size=1, max_size=30).filter(str.strip)


@given(
    prompt=_words,
    model=st.sampled_from(list(ba.Model)) | _words,
    resolution=st.none() | st.sampled_from(list(ba.Resolution)),
    size=st.none() | st.sampled_from(list(ba.AspectRatio)),
    image_urls=st.lists(st.from_regex(_URL), max_size=3),
)
@settings(max_examples=200, deadline=None)
def test_a_request_is_stored_as_the_converter_writes_it(
    prompt: str,
    model: str,
    resolution: ba.Resolution | None,
    size: ba.AspectRatio | None,
    image_urls: list[str],
) -> None:
    # canonical_request builds the JSON by hand for speed: journals compare
    # inputs by this text, so it must stay exactly the converter's output.
    request = ba.GenerationRequest(prompt, model, resolution, size, image_urls)
    written = CONVERTER.unstructure(request, ba.GenerationRequest)
    expected = json.dumps(written, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_request(request) == expected
    assert CONVERTER.structure(json.loads(expected), ba.GenerationRequest) == request


@given(
    task_id=st.text(st.characters(codec=None), max_size=30),
    status=st.sampled_from(list(ba.TaskStatus)),
    raw_status=st.text(max_size=10),
    created=st.none()
    | st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))])),
    model=_texts,
    object_=_texts,
    image_url=_texts,
    error=_texts,
)
@settings(max_examples=200, deadline=None)
def test_a_task_is_stored_as_the_converter_writes_it(
    task_id: str,
    status: ba.TaskStatus,
    raw_status: str,
    created: datetime | None,
    model: str | None,
    object_: str | None,
    image_url: str | None,
    error: str | None,
) -> None:
    # dumps_task builds the JSON by hand for speed: it must write exactly
    # what the converter's output gives, and load back to the same task.
    task = ba.Task(task_id, status, raw_status, created, model, object_, image_url, error)
    text = dumps_task(task)
    written = CONVERTER.unstructure(task, ba.Task)
    assert text == json.dumps(written, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert CONVERTER.structure(json.loads(text), ba.Task) == task


def test_the_stored_task_names_every_field() -> None:
    # A field added to Task must be added to dumps_task too.
    stored = json.loads(dumps_task(ba.Task("t1", ba.TaskStatus.QUEUED)))
    assert sorted(stored) == sorted(field.name for field in attrs.fields(ba.Task))
