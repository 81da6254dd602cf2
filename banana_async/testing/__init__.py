"""A scriptable, in-process fake of the Nano Banana task API.

:class:`FakeBananaServer` is a real HTTP server on the loopback interface that
speaks both dialects side by side under one root URL:

* ``POST /v1/banana/images`` creates a task in the ``nano`` dialect;
* ``POST /v1/image/banana/`` creates a task in the ``navo`` dialect (the
  trailing slash is optional);
* ``GET /v1/result/{id}`` queries a task (shared by both dialects);
* ``GET /images/{id}.png`` downloads the image of a completed task (no API
  key needed, like a separate image host).

Task progress is computed from a clock when a task is queried, so thousands
of concurrent tasks cost one dictionary entry each and no timers. Outcomes are
scripted with :class:`TaskScript`, transport and protocol failures are
injected with :class:`Fault`, a provider's rate limit is set with
:class:`RequestBudget`, and every request is recorded as a
:class:`RecordedRequest`. A :class:`FaultProfile` (``flaky``,
``overloaded``, ``hostile``, or one of your own) strikes requests with a
seeded mix of faults. :class:`FakeClock` lets the server and a client
share a virtual time line; :class:`FastClock` speeds up real time for
batches.

The package also ships a pytest plugin
(``banana_async.testing.pytest_plugin``, loaded automatically by pytest)
with ready-made ``banana_server`` and ``banana_client`` fixtures.

Example:
    >>> async def demo() -> None:  # doctest: +SKIP
    ...     async with FakeBananaServer(api_key="k", duration=0.0) as server:
    ...         server.plan(TaskScript(outcome="fail", error="content policy violation"))
    ...         server.inject(Fault.status(429, headers={"Retry-After": "1"}), on="query")
    ...         ...  # point a client at server.url
"""

# The code lives in private modules, one per concern: _server (routing and
# answers), _tasks (scripts, tasks, recorded requests), _faults, _budget,
# _clock, and _common (value checks they share). Users import every name
# from here; pytest_plugin holds the fixtures.

from __future__ import annotations

from banana_async.testing import _faults, _profiles, _tasks
from banana_async.testing._budget import RequestBudget
from banana_async.testing._clock import FakeClock, FastClock
from banana_async.testing._faults import Fault
from banana_async.testing._profiles import FaultProfile, WeightedFault
from banana_async.testing._server import FakeBananaServer
from banana_async.testing._tasks import FakeTask, RecordedRequest, TaskScript

__all__ = [
    "FAULT_PROFILES",
    "DialectName",
    "FakeBananaServer",
    "FakeClock",
    "FakeTask",
    "FastClock",
    "Fault",
    "FaultAction",
    "FaultProfile",
    "FaultProfileName",
    "FaultTarget",
    "RecordedRequest",
    "RequestBudget",
    "RequestKind",
    "TaskOutcome",
    "TaskScript",
    "WeightedFault",
]

# The aliases are bound again here for autodoc, which documents a module's
# variables only from the doc comments in that module's own source.

#: The two API dialects the fake serves.
DialectName = _tasks.DialectName
#: How a task ends once its duration has elapsed.
TaskOutcome = _tasks.TaskOutcome
#: What a recorded request was, by route.
RequestKind = _tasks.RequestKind
#: Which requests an injected fault applies to.
FaultTarget = _faults.FaultTarget
#: What an injected fault does.
FaultAction = _faults.FaultAction
#: The names of the built-in fault profiles (see :meth:`FaultProfile.named`).
FaultProfileName = _profiles.FaultProfileName
#: The built-in fault profiles' names, mildest first.
FAULT_PROFILES = _profiles.FAULT_PROFILES

# Documented (and cross-referenced) where users import them from.
for _cls in (
    FakeBananaServer,
    FakeClock,
    FakeTask,
    FastClock,
    Fault,
    FaultProfile,
    RecordedRequest,
    RequestBudget,
    TaskScript,
    WeightedFault,
):
    _cls.__module__ = __name__
del _cls
