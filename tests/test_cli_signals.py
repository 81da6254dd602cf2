"""The command line's messages after an interruption."""

from __future__ import annotations

from pathlib import Path

from banana_async.cli.commands.batch import MANIFEST, open_manifest


def test_the_manifest_is_named_by_its_path(tmp_path: Path) -> None:
    # The Ctrl-C message names it: a file opened from a descriptor is named by the number.
    with open_manifest(tmp_path) as manifest:
        assert manifest.name == str(tmp_path / MANIFEST)
    assert (tmp_path / MANIFEST).stat().st_mode & 0o777 == 0o600
