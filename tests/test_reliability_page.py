"""The reliability page names tests that exist: a renamed test must not leave it stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reliability.md"


def _defined() -> set[str]:
    """Names of the test functions and test-case classes of the suite."""
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"^(?:async )?def (test_\w+)", text, re.MULTILINE))
        names |= set(re.findall(r"^(Test\w+) = ", text, re.MULTILINE))
    return names


def test_every_test_the_reliability_page_names_exists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    # Test names, not the module names of tests/test_*.py paths.
    named = set(re.findall(r"(?<![/\w])(test_\w+|Test[A-Z]\w+)\b(?!\.py)", text))
    files = set(re.findall(r"`(tests/test_\w+\.py)", text))
    assert len(named) >= 15, named  # the page's tables, not a stray word
    assert named - _defined() == set()
    assert {name for name in files if not (ROOT / name).is_file()} == set()
