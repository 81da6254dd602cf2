"""``banana-async demo --faults PROFILE``: the demo through a misbehaving fake provider."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from banana_async.cli.commands import demo
from banana_async.cli.parser import FAULT_PROFILE_NAMES
from banana_async.testing import FAULT_PROFILES

from .test_cli import FAST, json_lines, run_main


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BANANA_API_KEY", raising=False)
    monkeypatch.setattr(demo, "DEMO_DURATIONS", (0.01, 0.05))
    monkeypatch.setattr(demo, "DEMO_STALL", 0.4)
    monkeypatch.setattr(demo, "DEMO_REQUEST_TIMEOUT", 0.2)


def test_the_demo_through_hostile_ends_with_the_books_balanced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_main(
        capsys, "demo", "--faults", "hostile", "--seed", "4", "--count", "12",
        "--out", str(tmp_path), *FAST,
    )  # fmt: skip
    assert code == 0, out + err
    assert "repeat with --faults hostile --seed 4" in out
    *_, summary, gallery = out.strip().splitlines()
    assert gallery.startswith(f"gallery: {tmp_path / 'index.html'}")
    assert summary.startswith(
        "demo finished as designed through the 'hostile' fault profile (seed 4, "
    )
    assert "0 create(s) sent twice, 0 task(s) lost, 0 unexpected failure(s)" in summary
    saved = int(re.search(r"(\d+) images saved", summary).group(1))  # type: ignore[union-attr]
    assert saved == len(list(tmp_path.glob("*.png")))
    broken = re.search(r"(\d+) create\(s\) broken by injected faults", summary)
    failed_by_fault = out.count("(expected: injected fault)")
    assert failed_by_fault == (int(broken.group(1)) if broken else 0)
    # A prompt scripted to fail may have its create broken first.
    scripted = int(re.search(r"(\d+) failed as scripted", summary).group(1))  # type: ignore[union-attr]
    assert scripted <= 2
    assert saved + scripted + failed_by_fault == 12


def test_json_marks_the_failures_the_faults_caused_as_expected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["--json", "demo", "--faults", "flaky", "--count", "6", "--out", str(tmp_path), *FAST]
    code, out, err = run_main(capsys, *argv)
    assert code == 0, err
    records = json_lines(out)
    assert sorted(r["index"] for r in records) == list(range(6))
    for record in records:
        assert record["ok"] or record["expected_failure"], record


def test_the_help_names_the_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "demo", "--help")
    assert code == 0
    assert "--faults PROFILE" in out
    # The parser keeps its own copy, so as not to load the fake server.
    assert FAULT_PROFILE_NAMES == FAULT_PROFILES
    for name in FAULT_PROFILES:
        assert name in out
