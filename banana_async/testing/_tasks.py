"""What the fake server holds: task scripts, tasks and the requests it received."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from banana_async._checks import count_problem
from banana_async.testing._common import freeze_mapping, non_negative

if TYPE_CHECKING:
    from collections.abc import Mapping

    from banana_async.testing._faults import Fault

__all__ = [
    "DialectName",
    "FakeTask",
    "RecordedRequest",
    "RequestKind",
    "TaskOutcome",
    "TaskScript",
]

#: The two API dialects the fake serves.
DialectName = Literal["nano", "navo"]
#: How a task ends once its duration has elapsed.
TaskOutcome = Literal["complete", "fail"]
#: What a recorded request was, by route.
RequestKind = Literal["create", "query", "image", "other"]


def _positive_count(_instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    """Attrs validator: ``None`` or an integer of at least one."""
    if value is not None and (problem := count_problem(value, attribute.name)):
        raise ValueError(problem)


@attrs.frozen
class TaskScript:
    """How one fake task behaves.

    Attributes:
        duration: Seconds (on the server's clock) from creation to the terminal
            state; ``None`` keeps the task processing until
            :meth:`FakeBananaServer.finish` or :meth:`FakeBananaServer.fail`.
        outcome: ``"complete"`` (an image is produced) or ``"fail"``.
        error: The error message a failed task reports.
        status_words: Maps a canonical status (``queued``, ``processing``,
            ``completed``, ``failed``) to the word the server sends instead,
            e.g. ``{"completed": "SUCCEEDED", "processing": "running"}``.
        task_id: The id to give the task instead of a random one (for
            example, one that needs URL quoting). Must be unused.
        queries: When set, the task reaches its terminal state at its Nth
            status query (counted per task; the first query is 1) instead of
            after ``duration``, which is then ignored: ``queries=2`` answers
            ``processing`` once, then ``completed`` (or ``failed``). Handy
            when a test or benchmark must not depend on timing. Queries
            answered by an injected fault that skips processing do not count.
            :meth:`FakeBananaServer.finish` and :meth:`FakeBananaServer.fail`
            still end the task earlier.
    """

    duration: float | None = attrs.field(default=0.0, validator=non_negative)
    outcome: TaskOutcome = attrs.field(
        default="complete", validator=attrs.validators.in_(("complete", "fail"))
    )
    error: str = "generation failed"
    status_words: Mapping[str, str] = attrs.field(
        factory=dict, converter=freeze_mapping, hash=False
    )
    task_id: str | None = None
    queries: int | None = attrs.field(default=None, validator=_positive_count)

    def word(self, status: str) -> str:
        """The word sent on the wire for a canonical status.

        Args:
            status: A canonical status such as ``"completed"``.

        Returns:
            The scripted replacement, or ``status`` itself.
        """
        return self.status_words.get(status, status)


@attrs.define
class FakeTask:
    """The server-side state of one task.

    Attributes:
        id: The task id.
        dialect: The dialect it was created with.
        body: The create request's JSON body.
        created_at: Creation time on the server's clock.
        created_unix: Creation time as integer Unix seconds (the ``created`` field).
        script: The script it follows.
        finished_at: Clock time at which it becomes terminal; ``None`` while it
            waits for a manual :meth:`FakeBananaServer.finish` or
            :meth:`FakeBananaServer.fail`, or for the status query that
            :attr:`TaskScript.queries` names.
        outcome: How it ends.
        error: The error message once failed, else ``None``.
        queries: Status queries of this task answered so far.
    """

    id: str
    dialect: DialectName
    body: dict[str, Any]
    created_at: float
    created_unix: int
    script: TaskScript
    finished_at: float | None
    outcome: TaskOutcome
    error: str | None
    queries: int = 0

    @property
    def model(self) -> str:
        """The model named in the create request."""
        return str(self.body.get("model", ""))

    def is_terminal(self, now: float) -> bool:
        """Whether the task has finished (completed or failed) at ``now``.

        Args:
            now: A time on the server's clock.

        Returns:
            ``True`` once ``now`` has reached :attr:`finished_at`.
        """
        return self.finished_at is not None and now >= self.finished_at

    def status(self, now: float) -> str:
        """The canonical status at a given time.

        Args:
            now: A time on the server's clock.

        Returns:
            ``"processing"`` before the task finishes, then ``"completed"`` or
            ``"failed"``.
        """
        if not self.is_terminal(now):
            return "processing"
        return "completed" if self.outcome == "complete" else "failed"

    def wire_status(self, now: float) -> str:
        """The status word the server sends at ``now`` (after ``status_words``).

        Args:
            now: A time on the server's clock.

        Returns:
            The word for :meth:`status`, as scripted.
        """
        return self.script.word(self.status(now))


@attrs.frozen
class RecordedRequest:
    """One request the fake server received.

    Attributes:
        method: The HTTP method.
        path: The raw request path as sent (still URL-quoted, with any query string).
        kind: ``create``, ``query``, ``image`` or ``other`` (unknown route or method).
        dialect: The dialect of a create request, else ``None``.
        headers: A case-insensitive, read-only copy of the request headers.
        body: The raw request body.
        json: The body parsed as JSON, or ``None`` if it is empty or not JSON.
        task_id: The task created (create) or addressed (query, image), decoded.
        at: Arrival time on the server's clock.
        rate_limited: Whether the server's :class:`RequestBudget` refused it
            with ``429`` (it was then not processed, and no fault struck it).
        fault: The fault that struck it (queued with
            :meth:`FakeBananaServer.inject` or drawn from a
            :class:`FaultProfile`), or ``None``.
        answered: ``False`` when no answer reached the client: the server
            dropped the connection (a reset), or the client had closed it
            when a stalled answer was ready.
    """

    method: str
    path: str
    kind: RequestKind
    dialect: DialectName | None
    headers: Mapping[str, str] = attrs.field(hash=False)
    body: bytes
    json: Any = attrs.field(hash=False)
    task_id: str | None
    at: float
    rate_limited: bool = False
    fault: Fault | None = None
    answered: bool = True

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header, or ``None`` if none was sent."""
        return self.headers.get("Authorization")
