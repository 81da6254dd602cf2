"""Processes that open the same journal at the same instant: exactly one wins.

Before the fix, :meth:`Journal.open` read the file (taking a SHARED lock,
which exclusive locking mode never gives back) before asking for the write
lock, so two openers of a new file could each wait for the other and both
fail with "in use". On that code this test failed on every run: in three
runs, 3, 5 and 5 of its 12 rounds had no winner at all (mostly new files;
empty files and existing journals fail less often). The shared-open test
failed in one run of three (two ``exclusive=False`` openers of a new file,
one refused as "in use").
"""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import pytest

import banana_async as ba
from banana_async.journal import Journal

# One long-lived child per slot, so a round costs no interpreter start-up. Per
# round it reads "<path>\t<go file>\t<exclusive>", says it is waiting, spins
# until the go file exists (so all children call open within microseconds of
# each other), and reports "won" or "lost <message>". A winner keeps the
# journal open until it reads the next line, so every loser of the round has
# met the open journal.
CHILD = textwrap.dedent(
    """
    import os, sys
    from banana_async.errors import JournalError
    from banana_async.journal import Journal

    print("ready", flush=True)
    while line := sys.stdin.readline():
        path, go, exclusive = line.rstrip("\\n").split("\\t")
        print("waiting", flush=True)
        while not os.path.exists(go):
            pass
        try:
            journal = Journal.open(path, exclusive=exclusive == "1")
        except JournalError as exc:
            print("lost", exc, flush=True)
            continue
        print("won", flush=True)
        sys.stdin.readline()
        journal.close()
    """
)
DEADLINE = 60.0  # only for a child that hangs; nothing here measures time
CHILDREN = 4


class Child:
    """One child process and the lines it printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.stdin: IO[str] = process.stdin
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in iter(stream.readline, ""):
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()

    def receive(self) -> str:
        line = self.lines.get(timeout=DEADLINE)
        assert line is not None, f"child ended early: {self.process.stderr}"
        return line


@pytest.fixture
def children() -> Iterator[list[Child]]:
    with ExitStack() as stack:
        started = [
            Child(
                stack.enter_context(
                    subprocess.Popen(
                        [sys.executable, "-c", CHILD],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            )
            for _ in range(CHILDREN)
        ]
        try:
            for child in started:
                assert child.receive() == "ready"
            yield started
        finally:
            for child in started:
                child.stdin.close()  # ends the child's loop
            for child in started:
                child.process.wait(timeout=DEADLINE)
                child.reader.join(timeout=DEADLINE)
        for child in started:
            assert child.process.stderr is not None
            errors = child.process.stderr.read()
            assert not errors, errors
            assert child.process.returncode == 0


def race(tmp_path: Path, children: list[Child], name: str, *, exclusive: bool = True) -> list[str]:
    """Let ``children`` open ``tmp_path / name`` at once; return what each reported."""
    path = tmp_path / name
    go = tmp_path / f"{name}.go"
    for child in children:
        child.send(f"{path}\t{go}\t{int(exclusive)}")
    for child in children:
        assert child.receive() == "waiting"
    go.touch()
    results = [child.receive() for child in children]
    for child, result in zip(children, results, strict=True):
        if result == "won":
            child.send("")  # close the journal: the round is over
    return results


def prepare(tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / name
    if kind == "empty":
        path.touch()
    elif kind == "journal":
        with Journal.open(path) as journal:
            journal.record_sending(0, ba.GenerationRequest("a cat"))


# New files first and most often: that is where both openers used to fail.
ROUNDS = [("new", n) for n in (2, 3, 4, 2, 3, 4)] + [
    (kind, n) for kind in ("empty", "journal") for n in (2, 3, 4)
]


def test_exactly_one_of_many_simultaneous_openers_wins(
    tmp_path: Path, children: list[Child]
) -> None:
    outcomes = []
    for number, (kind, count) in enumerate(ROUNDS):
        name = f"round-{number}-{kind}.sqlite"
        prepare(tmp_path, name, kind)
        results = race(tmp_path, children[:count], name)
        outcomes.append((kind, count, sum(r == "won" for r in results)))
        for result in results:
            assert result == "won" or "in use by another open journal" in result, result
    assert outcomes == [(kind, count, 1) for kind, count in ROUNDS]
    # Whoever won, the file is a journal, readable now that everyone let go.
    for number, (kind, _) in enumerate(ROUNDS):
        with Journal.open(tmp_path / f"round-{number}-{kind}.sqlite") as journal:
            assert journal.counts()[ba.EntryState.SENDING] == (kind == "journal")


def test_simultaneous_shared_openers_all_win(tmp_path: Path, children: list[Child]) -> None:
    for number in range(3):
        results = race(tmp_path, children, f"shared-{number}.sqlite", exclusive=False)
        assert results == ["won"] * len(children)
