"""Where one input of a journaled batch is, and the one table of what may follow what.

Every store (the embedded SQLite one, and any networked one) checks each
record against :data:`TRANSITIONS` before it writes it, atomically with the
write; a resumed batch decides what to do with each entry from the same
table, through :func:`resume_step`. Nothing else interprets the states.

The life of an entry::

    (none) ──> SENDING ──> CREATED ──> COMPLETED (──> image path recorded)
      │          │  │          └─────> FAILED ──> (none)   retry, on request only
      │          │  └─> UNCONFIRMED ──> (none)   resend, on request only
      └──> ERROR <┘      (and SENDING ──> (none), resend too)
            └──> SENDING   created again: nothing was created for it
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "TRANSITIONS",
    "EntryState",
    "ResumeStep",
    "may_follow",
    "resume_step",
    "sources",
]


class EntryState(enum.StrEnum):
    """Where one input of a batch is; stored as its value in the journal."""

    SENDING = "sending"
    """Recorded as the create request goes on the wire (after its turn and a connection).

    Found on resume, the create's fate is unknown. A create answered 429 is
    recorded as ``ERROR`` while it waits to be sent again: it was not processed.
    """
    CREATED = "created"
    """The provider created the task (its id is known); it has not finished yet."""
    COMPLETED = "completed"
    """The task completed; the image path is recorded once it is downloaded."""
    FAILED = "failed"
    """The task ended ``failed`` at the provider."""
    ERROR = "error"
    """The input failed and certainly nothing was created (invalid input, a 400, never
    sent); a resumed batch tries it again, as that cannot bill a task twice."""
    UNCONFIRMED = "unconfirmed"
    """A create failed in a way that may have created (and billed) a task."""

    @property
    def final(self) -> bool:
        """True for states a resumed batch reports as they are, without any request.

        :attr:`CREATED` (poll the task again), :attr:`ERROR` (create it again:
        nothing was created) and :attr:`SENDING` (unknown: report it as
        unconfirmed, or resend it on request) are not final. In the table: a
        final state can be followed by nothing but itself, or by the
        forgetting that a resend asks for.
        """
        return TRANSITIONS[self] <= {self, None}


class ResumeStep(enum.Enum):
    """What a resumed batch does with an input, by the state of its entry."""

    CREATE = "create"
    """Nothing was created for it (no entry, or ``ERROR``): create it (again)."""
    POLL = "poll"
    """Its task exists and has not finished (``CREATED``): poll it, never create it."""
    REPORT = "report"
    """Its task ended (``COMPLETED``, ``FAILED``): report it from the journal."""
    UNCONFIRMED = "unconfirmed"
    """A create was sent and its answer never recorded (``SENDING``, ``UNCONFIRMED``):
    report it as unconfirmed, or forget the entry and create it again on request."""


# The one table. Each state (None: nothing recorded) maps to the states that
# may follow it (None again: the entry is forgotten, which only a resend asks
# for), and to what a resumed batch does with it. A state following itself is
# a newer record of the same step (a newer task snapshot, the same end seen
# again, an error replaced); keeping an error or an image path on an entry
# (note_error, record_download) is no transition and not in the table.
_TABLE: Final[Mapping[EntryState | None, tuple[frozenset[EntryState | None], ResumeStep]]] = {
    None: (frozenset({EntryState.SENDING, EntryState.ERROR}), ResumeStep.CREATE),
    EntryState.SENDING: (
        frozenset(
            {
                EntryState.CREATED,
                EntryState.COMPLETED,  # a create that answered with a finished task
                EntryState.FAILED,
                EntryState.ERROR,  # refused: certainly nothing created
                EntryState.UNCONFIRMED,  # may have created one
                None,  # resend, on request only
            }
        ),
        ResumeStep.UNCONFIRMED,
    ),
    EntryState.CREATED: (
        frozenset({EntryState.CREATED, EntryState.COMPLETED, EntryState.FAILED}),
        ResumeStep.POLL,
    ),
    EntryState.COMPLETED: (frozenset({EntryState.COMPLETED}), ResumeStep.REPORT),
    # Forgotten when the user asks to retry failed tasks: a new task, billed anew.
    EntryState.FAILED: (frozenset({EntryState.FAILED, None}), ResumeStep.REPORT),
    EntryState.ERROR: (frozenset({EntryState.SENDING, EntryState.ERROR}), ResumeStep.CREATE),
    EntryState.UNCONFIRMED: (frozenset({None}), ResumeStep.UNCONFIRMED),
}

TRANSITIONS: Final[Mapping[EntryState | None, frozenset[EntryState | None]]] = MappingProxyType(
    {state: following for state, (following, _) in _TABLE.items()}
)
"""Each state (None: nothing recorded) -> the states that may follow it (None: forgotten)."""

_SOURCES: Final = {
    after: frozenset(before for before, following in TRANSITIONS.items() if after in following)
    for after in (*EntryState, None)
}


def may_follow(before: EntryState | None, after: EntryState | None) -> bool:
    """Tell whether an entry in state ``before`` may be recorded as ``after``.

    None stands for "nothing recorded" (as ``before``) and for "forgotten"
    (as ``after``: what :meth:`~banana_async.Journal.mark_resend` does).
    """
    return after in TRANSITIONS[before]


def sources(after: EntryState | None) -> frozenset[EntryState | None]:
    """The states (None: nothing recorded) that ``after`` may follow."""
    return _SOURCES[after]


def resume_step(state: EntryState | None) -> ResumeStep:
    """What a resumed batch does with an input whose entry is in ``state`` (None: no entry)."""
    return _TABLE[state][1]
