"""``banana-async demo --faults PROFILE``: the demo through a misbehaving fake provider."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from banana_async.cli.commands import demo
from banana_async.cli.parser import FAULT_PROFILE_NAMES
from banana_async.testing import FAULT_PROFILES, Fault, FaultProfile, WeightedFault

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
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo finished"))
    *summary, gallery = lines[start:]
    assert gallery.startswith(f"gallery: {tmp_path / 'index.html'}")
    assert summary[0].startswith(
        "demo finished as designed through the 'hostile' fault profile (seed 4); the faults struck "
    )
    assert summary[-1].startswith(
        "  creates sent twice: 0, tasks lost: 0, unexpected failures: 0; in "
    )
    text = "\n".join(summary)
    assert "(s)" not in text
    saved = int(re.search(r"(\d+) images? saved", text).group(1))  # type: ignore[union-attr]
    assert saved == len(list(tmp_path.glob("*.png")))
    broken = re.search(r"(\d+) creates? broken by injected faults", text)
    failed_by_fault = out.count("(expected: injected fault)")
    assert failed_by_fault == (int(broken.group(1)) if broken else 0)
    # A prompt scripted to fail may have its create broken first: the line says so.
    found = re.search(r"(\d+) failed as scripted, of the 2 inputs scripted to fail", text)
    assert found is not None, text
    scripted = int(found.group(1))
    if scripted < 2:
        assert f"a fault broke the create of {2 - scripted} of them before" in text
    assert saved + scripted + failed_by_fault == 12


def test_a_scripted_failure_a_fault_broke_first_is_explained(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Every create processed, its answer lost: the provider never gets to
    # refuse the prompt scripted to fail in the client's sight.
    always = FaultProfile(
        "flaky", create_rate=1.0, create_faults=[WeightedFault(Fault.reset(process=True), 1)]
    )
    monkeypatch.setattr(FaultProfile, "named", lambda *args, **kwargs: always)
    code, out, err = run_main(
        capsys, "demo", "--faults", "flaky", "--seed", "1", "--count", "3",
        "--out", str(tmp_path), *FAST,
    )  # fmt: skip
    assert code == 0, out + err
    lines = out.splitlines()
    start = lines.index("demo finished as designed through the 'flaky' fault profile (seed 1); "
                        "the faults struck 3 requests:")  # fmt: skip
    assert lines[start + 1 : start + 4] == [
        f"  0 images saved in {tmp_path}/",
        "  0 failed as scripted, of the 1 input scripted to fail; a fault broke the create "
        "of 1 of them before the provider could refuse it (counted with the broken creates "
        "below)",
        "  3 creates broken by injected faults (3 APIConnectionError), shown as expected "
        "failures; 3 of them made a task all the same (the provider processed the create, "
        "its answer was lost), and their outcomes say the create may have happened",
    ]
    assert lines[start + 4].startswith(
        "  creates sent twice: 0, tasks lost: 0, unexpected failures: 0; in "
    )


def test_seed_without_faults_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    code, text, err = run_main(capsys, "demo", "--seed", "4", "--out", str(out))
    assert code == 2
    assert text == ""
    assert err == (
        "error: --seed needs --faults PROFILE: it seeds the fault profile's draws "
        "(the demo's task durations are not seeded)\n"
    )
    assert not out.exists()  # refused before anything started


def test_json_marks_the_failures_the_faults_caused_as_expected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["--json", "demo", "--faults", "flaky", "--count", "6", "--out", str(tmp_path), *FAST]
    code, out, err = run_main(capsys, *argv)
    assert code == 0, err
    *records, gallery = json_lines(out)
    assert sorted(r["index"] for r in records) == list(range(6))
    for record in records:
        assert record["ok"] or record["expected_failure"], record
    assert gallery["gallery"] == str(tmp_path / "index.html")


def test_the_help_names_the_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "demo", "--help")
    assert code == 0
    assert "--faults PROFILE" in out
    # The parser keeps its own copy, so as not to load the fake server.
    assert FAULT_PROFILE_NAMES == FAULT_PROFILES
    for name in FAULT_PROFILES:
        assert name in out
