"""Every name a public module exports is documented, where the docs say it lives.

Read from the reStructuredText directives in ``docs/*.md`` (Sphinx itself
runs in ``nox -s docs``; this finds a gap without building): a name counts as
documented when a directive names it (``.. autoclass::``, ``.. py:data::``...)
in its module, or anywhere for the very same object (``Outcome`` is
documented at the top and exported by ``banana_async.batch`` too), or when an
``automodule`` with ``:members:`` renders it and does not exclude it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

# The modules that promise names. The cli package's submodules are its
# implementation: banana_async.cli says only its own __all__ is for use from
# Python. The pytest plugin's fixtures are documented as a table (below).
PUBLIC_MODULES = [
    "banana_async",
    "banana_async.batch",
    "banana_async.cli",
    "banana_async.client",
    "banana_async.dialects",
    "banana_async.download",
    "banana_async.errors",
    "banana_async.journal",
    "banana_async.journal.sqlite",
    "banana_async.journal.states",
    "banana_async.journal.store",
    "banana_async.models",
    "banana_async.ratelimit",
    "banana_async.testing",
]
PLUGIN = "banana_async.testing.pytest_plugin"

_DIRECTIVE = re.compile(
    r"^\.\. (?P<kind>automodule|py:module|py:currentmodule|auto\w+|py:\w+)::\s*(?P<target>\S+)"
)


def _exported(module: str) -> list[str]:
    return list(importlib.import_module(module).__all__)


def _object(module: str, name: str) -> object:
    return getattr(importlib.import_module(module), name)


def _split_target(current: str, target: str) -> tuple[str, str]:
    """(module, name) of a directive's target, dotted or relative to the current module."""
    head, _, name = target.rpartition(".")
    if head:
        try:
            importlib.import_module(head)
        except ImportError:
            return current, target  # Class.method: not a module's name
        return head, name
    return current, name


def _automodule_members(module: str, options: list[str]) -> set[str]:
    text = " ".join(options)
    if ":members:" not in text or ":no-members:" in text:
        return set()
    excluded: set[str] = set()
    if ":exclude-members:" in text:
        tail = text.split(":exclude-members:", 1)[1].split(":", 1)[0]
        excluded = {name.strip() for name in tail.split(",") if name.strip()}
    return set(_exported(module)) - excluded


def _documented() -> set[tuple[str, int]]:
    """(name, id of the object) for every name a directive of the docs documents."""
    found: set[tuple[str, int]] = set()
    for page in sorted(DOCS.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        current = "banana_async"
        for number, line in enumerate(lines):
            match = _DIRECTIVE.match(line)
            if match is None:
                continue
            kind, target = match["kind"], match["target"]
            if kind in {"automodule", "py:module", "py:currentmodule"}:
                current = target
                if kind == "automodule":
                    options = []
                    for option in lines[number + 1 :]:
                        if not option.startswith("   "):
                            break
                        options.append(option.strip())
                    for name in _automodule_members(target, options):
                        found.add((name, id(_object(target, name))))
                continue
            module, name = _split_target(current, target)
            try:
                obj = _object(module, name)
            except AttributeError:
                continue  # a method or attribute of a class: not a module's name
            found.add((name, id(obj)))
    return found


DOCUMENTED = _documented()


def _public_names() -> list[tuple[str, str]]:
    return [(module, name) for module in PUBLIC_MODULES for name in _exported(module)]


def test_the_docs_are_read() -> None:
    names = {name for name, _ in DOCUMENTED}
    assert {"BananaClient", "NANO", "JournalStore", "FakeBananaServer", "ExitCode"} <= names


@pytest.mark.parametrize(("module", "name"), _public_names())
def test_every_exported_name_is_documented(module: str, name: str) -> None:
    assert (name, id(_object(module, name))) in DOCUMENTED, f"{module}.{name} is not in docs/"


@pytest.mark.parametrize("name", _exported(PLUGIN))
def test_every_name_of_the_pytest_plugin_is_on_the_testing_page(name: str) -> None:
    assert f"`{name}`" in (DOCS / "testing.md").read_text(encoding="utf-8")


def test_automodule_options_are_read() -> None:
    options = [":members:", ":exclude-members: BananaClient, Task,", "NANO"]
    members = _automodule_members("banana_async", options)
    assert "Model" in members
    assert not {"BananaClient", "Task", "NANO"} & members
    assert _automodule_members("banana_async", [":no-members:"]) == set()
