"""Named, seeded mixes of faults: a provider that is flaky, overloaded or hostile.

A :class:`FaultProfile` says, for each kind of request, how often a fault
strikes and which one (by weight). The server draws from it with a
:class:`random.Random` of its own, seeded, so the same seed and the same
sequence of requests give the same faults.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import attrs

from banana_async.testing._common import check_non_negative
from banana_async.testing._faults import Fault

if TYPE_CHECKING:
    from collections.abc import Mapping

    from banana_async.testing._tasks import RequestKind

__all__ = [
    "FAULT_PROFILES",
    "FaultProfile",
    "FaultProfileName",
    "WeightedFault",
]

#: The names :meth:`FaultProfile.named` knows.
FaultProfileName = Literal["flaky", "overloaded", "hostile"]

FAULT_PROFILES: Final[tuple[FaultProfileName, ...]] = ("flaky", "overloaded", "hostile")
"""The named profiles, mildest first."""

# Status words no provider documents: a client must keep polling through them.
_UNKNOWN_WORDS: Final = ("hatching", "PENDING_REVIEW")


def _rate(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Attrs validator: a probability."""
    if not 0.0 <= value <= 1.0:
        msg = f"{attribute.name} must be between 0 and 1, got {value!r}"
        raise ValueError(msg)


def _weight(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Attrs validator: a weight above zero (a zero weight is a fault never drawn)."""
    if not value > 0:
        msg = f"{attribute.name} must be > 0, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class WeightedFault:
    """One fault of a profile's mix, and how often it is picked among the others.

    Attributes:
        fault: The fault.
        weight: Its share of the mix: a fault of weight 2 is picked twice as
            often as one of weight 1.
    """

    fault: Fault
    weight: float = attrs.field(default=1.0, validator=_weight)


def _mix(value: Any) -> tuple[WeightedFault, ...]:
    """Attrs converter: a tuple of weighted faults (bare faults weigh 1)."""
    return tuple(item if isinstance(item, WeightedFault) else WeightedFault(item) for item in value)


def _no_word(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Attrs validator: creates and images take no status-word fault."""
    for item in value:
        if item.fault.action == "status_word":
            msg = f"{attribute.name}: a status-word fault only applies to queries"
            raise ValueError(msg)


def _json_only(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Attrs validator: an image answer is not JSON, so it cannot be edited."""
    for item in value:
        if item.fault.action in ("status_word", "edit"):
            msg = f"{attribute.name}: image downloads take no status-word or edit fault"
            raise ValueError(msg)


@attrs.frozen
class FaultProfile:
    """A seeded mix of faults for :class:`FakeBananaServer` to draw from.

    Give one (or a name of :data:`~banana_async.testing.FAULT_PROFILES`) to the server:
    ``FakeBananaServer(faults="flaky", seed=1)``. Each create, status query
    and image download that the server's budget lets through, and that no
    fault queued with :meth:`FakeBananaServer.inject` strikes, is struck by
    a fault drawn from this mix with the probability of its kind. A draw
    takes two numbers from the server's seeded generator whatever comes of
    it, so one seed and one sequence of requests always give one sequence
    of faults.

    Attributes:
        name: A name for messages and tables.
        create_rate: The probability that a create is struck.
        query_rate: The probability that a status query is struck.
        image_rate: The probability that an image download is struck.
        create_faults: What strikes a create, by weight.
        query_faults: What strikes a status query, by weight.
        image_faults: What strikes an image download, by weight.
    """

    name: str
    create_rate: float = attrs.field(default=0.0, validator=_rate)
    query_rate: float = attrs.field(default=0.0, validator=_rate)
    image_rate: float = attrs.field(default=0.0, validator=_rate)
    create_faults: tuple[WeightedFault, ...] = attrs.field(
        default=(), converter=_mix, validator=_no_word
    )
    query_faults: tuple[WeightedFault, ...] = attrs.field(default=(), converter=_mix)
    image_faults: tuple[WeightedFault, ...] = attrs.field(
        default=(), converter=_mix, validator=_json_only
    )

    def __attrs_post_init__(self) -> None:
        for kind in ("create", "query", "image"):
            if getattr(self, f"{kind}_rate") > 0 and not getattr(self, f"{kind}_faults"):
                msg = f"{kind}_rate is above 0 but {kind}_faults is empty"
                raise ValueError(msg)

    def draw(self, kind: RequestKind, rng: random.Random) -> Fault | None:
        """The fault that strikes one request of ``kind``, or ``None``.

        Args:
            kind: The request's kind; ``other`` is never struck.
            rng: Where the two numbers of the draw come from.

        Returns:
            The fault, or ``None`` when the request is answered normally.
        """
        if kind == "other":
            return None
        # Two numbers every time, struck or not: the sequence of faults then
        # depends only on the seed and the sequence of requests.
        roll, pick = rng.random(), rng.random()
        rate, mix = {
            "create": (self.create_rate, self.create_faults),
            "query": (self.query_rate, self.query_faults),
            "image": (self.image_rate, self.image_faults),
        }[kind]
        if roll >= rate or not mix:
            return None
        point = pick * sum(item.weight for item in mix)
        for item in mix:
            point -= item.weight
            if point < 0:
                return item.fault
        return mix[-1].fault  # rounding left a sliver past the last weight

    @classmethod
    def named(
        cls,
        name: FaultProfileName,
        *,
        stall: float = 2.0,
        slow: float = 0.1,
        retry_after: int = 1,
    ) -> Self:
        """One of the named profiles (see "Fault profiles" in the testing docs).

        Args:
            name: ``flaky``, ``overloaded`` or ``hostile``.
            stall: Real seconds of a stall meant to outlast the client's
                ``timeout``: give the client a shorter one.
            slow: Real seconds of a slow answer, meant to stay inside it.
            retry_after: The ``Retry-After`` seconds of the 429s that send one.

        Returns:
            The profile.

        Raises:
            ValueError: If ``name`` is not a profile's name, or a duration is
                negative.
        """
        check_non_negative(stall, "stall")
        check_non_negative(slow, "slow")
        check_non_negative(retry_after, "retry_after")
        builders = {"flaky": _flaky, "overloaded": _overloaded, "hostile": _hostile}
        builder = builders.get(name)
        if builder is None:
            msg = f"unknown fault profile {name!r}; known: {', '.join(FAULT_PROFILES)}"
            raise ValueError(msg)
        retry = {"Retry-After": str(retry_after)}
        return cls(name=name, **builder(stall, slow, retry))


def _weighted(*pairs: tuple[Fault, float]) -> tuple[WeightedFault, ...]:
    """A profile's mix from ``(fault, weight)`` pairs, in order (the order is part of a draw)."""
    return tuple(WeightedFault(fault, weight) for fault, weight in pairs)


def _flaky(stall: float, slow: float, retry: Mapping[str, str]) -> dict[str, Any]:
    """A provider that mostly works: one request in ten meets a passing fault."""
    del stall  # a flaky provider answers, late at worst
    return {
        "create_rate": 0.10,
        "query_rate": 0.10,
        "create_faults": _weighted(
            (Fault.status(503), 3),
            (Fault.status(500), 2),
            (Fault.html(502), 2),
            (Fault.status(429, headers=retry), 2),
            (Fault.status(429), 1),
            (Fault.reset(), 1),
            (Fault.reset(process=True), 1),
            (Fault.stall(slow), 3),
        ),
        "query_faults": _weighted(
            (Fault.status(503), 3),
            (Fault.html(502), 2),
            (Fault.status(429, headers=retry), 2),
            (Fault.status(429), 1),
            (Fault.reset(), 1),
            (Fault.stall(slow), 3),
            (Fault.status_word(_UNKNOWN_WORDS[0]), 1),
        ),
    }


def _overloaded(stall: float, slow: float, retry: Mapping[str, str]) -> dict[str, Any]:
    """A provider at capacity: a third of the requests are refused, slowed or stalled."""
    longer = {"Retry-After": str(2 * int(retry["Retry-After"]))}
    return {
        "create_rate": 0.35,
        "query_rate": 0.30,
        "create_faults": _weighted(
            (Fault.status(429, headers=retry), 4),
            (Fault.status(429, headers=longer), 2),
            (Fault.status(429), 3),
            (Fault.status(503, headers=retry), 3),
            (Fault.html(504), 1),
            (Fault.stall(slow), 4),
            (Fault.stall(stall), 1),
        ),
        "query_faults": _weighted(
            (Fault.status(429, headers=retry), 4),
            (Fault.status(429), 3),
            (Fault.status(503), 3),
            (Fault.stall(slow), 4),
            (Fault.stall(stall), 1),
        ),
    }


def _hostile(stall: float, slow: float, retry: Mapping[str, str]) -> dict[str, Any]:
    """A provider behind a broken proxy: odd bodies, odd words, dropped connections."""
    return {
        "create_rate": 0.25,
        "query_rate": 0.25,
        "create_faults": _weighted(
            (Fault.html(502), 2),
            (Fault.html(200), 1),
            (Fault.body('{"id": "tr'), 1),
            (Fault.body(""), 1),
            (Fault.body("upstream said no", status=500, content_type="text/plain"), 1),
            (Fault.reset(), 2),
            (Fault.reset(process=True), 2),
            (Fault.stall(stall), 1),
            (Fault.edit({"status": _UNKNOWN_WORDS[0]}), 1),
            (Fault.status(429, headers=retry), 1),
        ),
        "query_faults": _weighted(
            (Fault.html(502), 2),
            (Fault.body('{"status": "compl'), 1),
            (Fault.body("[]"), 1),
            (Fault.status_word(_UNKNOWN_WORDS[0]), 1),
            (Fault.status_word(_UNKNOWN_WORDS[1]), 1),
            (Fault.reset(), 2),
            (Fault.stall(stall), 1),
            (Fault.stall(slow), 1),
        ),
    }
