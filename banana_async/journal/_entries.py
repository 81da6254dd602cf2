"""What a journal holds about one input, and how its values become text."""

from __future__ import annotations

import json
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from banana_async._checks import count_problem
from banana_async._convert import CONVERTER
from banana_async.journal.states import EntryState
from banana_async.models import GenerationRequest, Task

__all__ = ["JournalEntry", "JournalProvider", "canonical_request"]


@attrs.frozen
class JournalEntry:
    r"""What the journal holds about one input of a batch.

    Attributes:
        index: The input's position in the batch (0-based).
        state: Where the input is.
        request: The request, or None when the input could not be made into one.
        raw_input: The input as text when it could not be made into a request.
        task_id: The provider's task id, once the create answered.
        task: The task as last recorded (after the create, or when it ended).
        error: The error message (a failed task's message, or the exception's).
        error_type: The class name of that error, e.g. ``BadRequestError``.
        path: Where the image was saved, once downloaded.
        updated_at: When the entry was last written (``time.time()``).

    Strings from outside may hold lone surrogates (``"\ud800"`` in a JSON
    answer decodes to one; so does an undecodable byte in a POSIX file
    name), which SQLite cannot store as text. ``task`` and ``task_id`` keep
    them exactly. ``raw_input``, ``error``, ``error_type`` and ``path`` keep
    them escaped, as ``text.encode("utf-8", "backslashreplace")`` does: the
    lone surrogate U+D800 becomes the six characters ``\ud800``, and every
    other character is kept. The recording methods return the escaped text
    too, so an entry reads back as it was returned. A ``path`` recorded that
    way no longer names the file: a resumed batch downloads that image again.
    """

    index: int
    state: EntryState
    request: GenerationRequest | None = None
    raw_input: str | None = None
    task_id: str | None = None
    task: Task | None = None
    error: str | None = None
    error_type: str | None = None
    path: str | None = None
    updated_at: float = 0.0


@attrs.frozen
class JournalProvider:
    """The provider a journal's tasks belong to.

    Recorded by :meth:`~banana_async.Journal.bind_provider`, as it was given.

    Attributes:
        dialect: The dialect's name, e.g. ``nano``.
        create_base_url: The base URL that creates are sent to.
        query_base_url: The base URL that status queries are sent to.
    """

    dialect: str
    create_base_url: str
    query_base_url: str

    def __str__(self) -> str:
        return f"{self.dialect!r} (create {self.create_base_url}, query {self.query_base_url})"

    def same_as(self, other: JournalProvider) -> bool:
        """Tell whether both name the same provider, however spelled.

        Dialect names compare without case or surrounding blanks (as the
        client reads them). URLs compare with the scheme and host in any case
        and without trailing slashes, so ``https://Host/x/`` and
        ``https://host/x`` are the same; the rest of the URL (path, port,
        query) must be equal.
        """
        return _normal_provider(self) == _normal_provider(other)


def _normal_provider(provider: JournalProvider) -> tuple[str, str, str]:
    return (
        provider.dialect.strip().lower(),
        _normal_url(provider.create_base_url),
        _normal_url(provider.query_base_url),
    )


def _normal_url(url: str) -> str:
    parts = urlsplit(url.strip())
    userinfo, at, host = parts.netloc.rpartition("@")
    return urlunsplit(
        (
            parts.scheme.lower(),
            userinfo + at + host.lower(),
            parts.path.rstrip("/"),
            parts.query,
            parts.fragment,
        )
    )


def canonical_request(request: GenerationRequest) -> str:
    """Return the canonical JSON text of a request (sorted keys, no whitespace).

    Equal requests give equal texts: the journal compares inputs by it, and a
    batch may hash the texts of all its inputs into a :attr:`~banana_async.Journal.fingerprint`.
    """
    # Written by hand, keys in sorted order, rather than through the
    # converter and an encoder: every input's first record holds it. The text
    # must never change (journals compare inputs by it): tests/test_journal_text.py
    # checks that it is the converter's output as compact JSON with sorted keys.
    text = encode_basestring
    urls = ",".join([text(url) for url in request.image_urls])
    canonical = (
        f'{{"image_urls":[{urls}],"model":{text(request.model)},"prompt":{text(request.prompt)}'
    )
    if request.resolution is not None:
        canonical += f',"resolution":{text(request.resolution)}'
    if request.size is not None:
        canonical += f',"size":{text(request.size)}'
    return canonical + "}"


def dumps_task(task: Task) -> str:
    """A task as the journal stores it: JSON with sorted keys, ASCII only."""
    # ensure_ascii=True: a task comes from the provider's JSON and may hold
    # lone surrogates ("\ud800"), which SQLite cannot store as text; as \u
    # escapes they round-trip exactly. Older rows (raw UTF-8) load the same.
    # Requests keep non-ASCII as it is: their canonical text must not change.
    #
    # Written by hand, keys in sorted order, rather than through the converter
    # and an encoder: two of every task's three records store it.
    # tests/test_journal_text.py checks that both give the same text.
    text = encode_basestring_ascii
    created, error, model = task.created, task.error, task.model
    kind, image_url = task.object, task.image_url
    return (
        f'{{"created":{"null" if created is None else text(created.isoformat())},'
        f'"error":{"null" if error is None else text(error)},'
        f'"id":{text(task.id)},'
        f'"image_url":{"null" if image_url is None else text(image_url)},'
        f'"model":{"null" if model is None else text(model)},'
        f'"object":{"null" if kind is None else text(kind)},'
        f'"raw_status":{text(task.raw_status)},'
        f'"status":{text(task.status.value)}}}'
    )


def storable(text: str | None) -> str | None:
    r"""Return ``text`` as the plain text columns keep it: encodable as UTF-8.

    Lone surrogates become ``\uXXXX`` escapes; every other character,
    backslashes included, is kept as it is (see :class:`JournalEntry`).
    """
    if text is None or text.isascii():
        return text  # the usual case, without an encode and a decode
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_index(index: int) -> None:
    """Refuse anything but an int >= 0 as an input's index.

    Raises:
        ValueError: ``index`` is not an int >= 0 (a bool is not one either).
    """
    if type(index) is int and index >= 0:
        return  # the usual case, without building a message
    problem = count_problem(index, "a journal index", minimum=0)
    if problem is not None:
        raise ValueError(problem)


def entry_from_row(row: tuple[Any, ...]) -> JournalEntry:
    """An entry from its row (the columns of every store, in their order).

    Raises:
        Exception: The row cannot be read (bad JSON, an unknown state...);
            each store turns it into its own :class:`~banana_async.JournalError`.
    """
    index, state, request, raw_input, task_id, task, error, error_type, path, updated = row
    stored_task = None if task is None else CONVERTER.structure(json.loads(task), Task)
    return JournalEntry(
        index=int(index),
        state=EntryState(state),
        request=None
        if request is None
        else CONVERTER.structure(json.loads(request), GenerationRequest),
        raw_input=raw_input,
        # The column is escaped text; the task's JSON has the exact id
        # (every write that sets the id sets the task with it).
        task_id=task_id if stored_task is None else stored_task.id,
        task=stored_task,
        error=error,
        error_type=error_type,
        path=path,
        updated_at=float(updated),
    )
