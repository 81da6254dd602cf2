"""benchmarks/plots.py draws real PNG charts from what bench.py writes.

The charts need matplotlib, a benchmark-only dependency (the ``bench``
extra, which the nox tests sessions install): without it these tests are
skipped, except under CI (``$CI`` set), where that is an error, so that a
green CI run has drawn the charts. ``data/bench-quick.json`` is
the JSON of a real ``bench.py --quick --part cpu --part polling --part
ratelimit`` run, so the charts are drawn from the very shape bench.py
writes. plots.py runs in a process of its own, as a user runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "benchmarks" / "plots.py"
SAMPLE = Path(__file__).parent / "data" / "bench-quick.json"

INSTALL = "matplotlib is not installed (pip install -e '.[bench]')"


@pytest.fixture(autouse=True)
def matplotlib() -> None:
    """Skip without matplotlib (an error under CI, whose nox sessions install it)."""
    if importlib.util.find_spec("matplotlib") is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL)
        pytest.skip(INSTALL)


CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel of each PNG colour type."""


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a whole, valid 8-bit PNG; fails on anything else.

    Every chunk's CRC is checked, and the image data must inflate to
    exactly one filter byte plus one row of pixels per line.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    offset, chunks, idat = 8, [], b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    assert chunks[0] == b"IHDR"
    assert chunks[-1] == b"IEND"
    assert depth == 8
    assert interlace == 0
    assert len(zlib.decompress(idat)) == height * (1 + width * CHANNELS[colour])
    return width, height


def plot(results: Path, *args: str) -> list[str]:
    """Run plots.py on ``results``; the lines it printed."""
    done = subprocess.run(
        [sys.executable, str(PLOTS), str(results), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def sample() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(SAMPLE.read_text())
    return report


def test_a_chart_per_part_beside_the_json(tmp_path: Path) -> None:
    results = tmp_path / "run.json"
    results.write_text(json.dumps(sample()))

    lines = plot(results)

    names = ["run-cpu.png", "run-polling.png", "run-ratelimit.png"]
    assert lines == [f"chart written to {tmp_path / name}" for name in names]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "run.json"])
    for name in names:
        width, height = png_size((tmp_path / name).read_bytes())
        # Figures of 8 to 12 by 4 to 6.5 inches at 110 dpi.
        assert 800 <= width <= 1400, name
        assert 400 <= height <= 800, name


def test_only_the_parts_measured_and_another_folder(tmp_path: Path) -> None:
    report = sample()
    report["details"] = {"polling": report["details"]["polling"]}
    results = tmp_path / "polling-only.json"
    results.write_text(json.dumps(report))
    charts = tmp_path / "charts"

    lines = plot(results, "--out-dir", str(charts))

    assert lines == [f"chart written to {charts / 'polling-only-polling.png'}"]
    assert [p.name for p in charts.iterdir()] == ["polling-only-polling.png"]
    png_size((charts / "polling-only-polling.png").read_bytes())


def test_a_run_without_a_charted_part_draws_nothing(tmp_path: Path) -> None:
    report = sample()
    report["details"] = {"memory": {}}
    results = tmp_path / "memory.json"
    results.write_text(json.dumps(report))

    lines = plot(results)

    assert lines == [f"no charted part (cpu, polling, ratelimit) in {results}"]
    assert [p.name for p in tmp_path.iterdir()] == ["memory.json"]
