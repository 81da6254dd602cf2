"""pytest fixtures: a running fake provider and a client bound to it.

pytest loads this plugin by itself once banana-async is installed (it is
registered under the ``pytest11`` entry point as ``banana_async``; turn it
off with ``-p no:banana_async``). It adds these function-scoped fixtures:

* ``banana_api_key``: the API key the fake server expects and the client sends;
* ``banana_clock``: a :class:`~banana_async.testing.FakeClock` that the server
  and the client share, so polls and retry delays take no real time;
* ``banana_server``: a started :class:`~banana_async.testing.FakeBananaServer`
  on the loopback interface, closed after the test;
* ``banana_client``: a :class:`~banana_async.BananaClient` of the ``nano``
  dialect pointed at ``banana_server``, closed after the test;
* ``banana_faults``: the fault profile of ``banana_server`` (a name such as
  ``"flaky"``, a :class:`~banana_async.testing.FaultProfile`, or ``None``,
  the default); parametrize it to run a test through a profile:
  ``@pytest.mark.parametrize("banana_faults", ["flaky", "hostile"])``;
* ``banana_fault_seed``: the seed of its draws (``0``), so a test meets the
  same faults on every run.

Override any of them in a ``conftest.py`` by defining a fixture of the same
name: for example ``banana_api_key`` to use another key, or ``banana_client``
to build a client with other options from ``banana_server`` and
``banana_clock``.

The two async fixtures need `pytest-asyncio <https://pypi.org/project/pytest-asyncio/>`_
and work in its ``auto`` and ``strict`` modes; they run on the event loop
that pytest-asyncio gives function-scoped fixtures (the test's own loop by
default). Without pytest-asyncio the plugin still loads, and a test that asks
for ``banana_server`` or ``banana_client`` fails with an error saying so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import pytest

from banana_async.client import BananaClient
from banana_async.testing import FakeBananaServer, FakeClock, FaultProfile, FaultProfileName

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from types import ModuleType

__all__ = [
    "API_KEY",
    "banana_api_key",
    "banana_client",
    "banana_clock",
    "banana_fault_seed",
    "banana_faults",
    "banana_server",
]

#: The API key of the ``banana_api_key`` fixture.
API_KEY = "banana-async-test-key"

_Fixture = TypeVar("_Fixture", bound="Callable[..., Any]")


def _import_pytest_asyncio() -> ModuleType | None:
    """pytest-asyncio, or ``None`` when it is not installed."""
    try:
        return importlib.import_module("pytest_asyncio")
    except ImportError:
        return None


_PYTEST_ASYNCIO = _import_pytest_asyncio()


def _async_fixture(function: _Fixture) -> _Fixture:
    """Make ``function`` a pytest-asyncio fixture, or one that explains why it cannot run.

    A pytest-asyncio fixture runs in ``auto`` and ``strict`` mode alike. Without
    pytest-asyncio, importing this plugin must not break a user's pytest, so
    the fixture is replaced by a plain one that fails the test that uses it.
    """
    if _PYTEST_ASYNCIO is not None:
        return cast("_Fixture", _PYTEST_ASYNCIO.fixture(function))
    name = function.__name__

    def unavailable() -> NoReturn:
        pytest.fail(
            f"the {name} fixture (from banana_async's pytest plugin) needs pytest-asyncio: "
            "pip install pytest-asyncio",
            pytrace=False,
        )

    unavailable.__doc__ = function.__doc__
    return cast("_Fixture", pytest.fixture(name=name)(unavailable))


@pytest.fixture
def banana_api_key() -> str:
    """The API key that ``banana_server`` expects and ``banana_client`` sends."""
    return API_KEY


@pytest.fixture
def banana_clock() -> FakeClock:
    """A virtual clock shared by ``banana_server`` and ``banana_client``."""
    return FakeClock()


@pytest.fixture
def banana_faults() -> FaultProfile | FaultProfileName | None:
    """The fault profile ``banana_server`` strikes requests from: none unless overridden."""
    return None


@pytest.fixture
def banana_fault_seed() -> int:
    """The seed of ``banana_server``'s fault draws: one seed, the same faults every run."""
    return 0


@_async_fixture
async def banana_server(
    banana_api_key: str,
    banana_clock: FakeClock | None,
    banana_faults: FaultProfile | FaultProfileName | None,
    banana_fault_seed: int,
) -> AsyncIterator[FakeBananaServer]:
    """A started fake provider on 127.0.0.1 (a free port), closed after the test.

    It answers 401 to a request without ``Authorization: Bearer
    <banana_api_key>``, and its tasks complete at their first status query
    (``duration=0.0`` on ``banana_clock``) unless a script says otherwise.
    On real time when ``banana_clock`` is overridden to return None. It
    strikes requests from ``banana_faults`` (none by default), seeded with
    ``banana_fault_seed``.
    """
    clock = None if banana_clock is None else banana_clock.time
    async with FakeBananaServer(
        api_key=banana_api_key, clock=clock, faults=banana_faults, seed=banana_fault_seed
    ) as server:
        yield server


@_async_fixture
async def banana_client(
    banana_server: FakeBananaServer, banana_api_key: str, banana_clock: FakeClock | None
) -> AsyncIterator[BananaClient]:
    """A ``nano`` client of ``banana_server`` on ``banana_clock``, closed after the test."""
    async with BananaClient(
        banana_api_key, base_url=banana_server.url, clock=banana_clock
    ) as client:
        yield client
