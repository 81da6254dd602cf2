"""A running batch's counts and their display on stderr: a rich bar or plain lines.

The counts of finished inputs come from the outcomes; where the tasks in
flight stand (queued, processing) comes from the client's status events
(``on_status=``), the same mechanism a user of the library would use.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, Self

from banana_async.cli.output import to_stderr
from banana_async.models import TaskStatus

if TYPE_CHECKING:
    from banana_async.models import Outcome, TaskEvent

__all__ = ["PROGRESS_INTERVAL", "RICH_REFRESH", "Progress", "RichBar", "Stats", "duration"]

PROGRESS_INTERVAL: Final = 2.0
"""Seconds between plain progress lines (when standard error is not a terminal)."""

RICH_REFRESH: Final = 0.5
"""Seconds between recomputations of the rate and ETA shown on the live bar."""


def duration(seconds: float) -> str:
    """A duration as ``42s``, ``3m07s`` or ``1h05m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Stats:
    """Counts of a running batch, for the progress display and the summary."""

    def __init__(self, *, total: int | None, concurrency: int, shared: bool = False) -> None:
        self.total = total
        self.concurrency = concurrency
        self.read = 0
        self.ok = 0
        self.failed = 0
        self.expected_failures = 0
        self.resumed = 0
        self.started = time.monotonic()
        # One worker of a batch shared through Postgres: it runs a share of
        # the total, and how large a share is not known in advance.
        self.shared = shared
        # Tasks created and not seen finished, by input index: their last
        # status; and how many have each (kept as events come, as a line is
        # drawn far more often than a batch of thousands could be counted).
        self.statuses: dict[int, TaskStatus] = {}
        # Their ids: after a Ctrl-C without a journal, the only record of
        # tasks that were paid for and may still finish.
        self.task_ids: dict[int, str] = {}
        self._counts: Counter[TaskStatus] = Counter()
        # When each input's task was first seen (created, or found by a
        # resume), for the time taken that the manifest records.
        self._seen: dict[int, float] = {}
        # What the batch waits for besides its tasks (another worker's
        # lease), asked at every redraw: None or "" when nothing.
        self.waiting: Callable[[], str | None] | None = None

    @property
    def finished(self) -> int:
        """Inputs reported, successful or not."""
        return self.ok + self.failed

    def on_status(self, event: TaskEvent) -> None:
        """Follow a task of the batch: the ``on_status`` listener of ``generate_many``."""
        index = event.index
        if index is None:
            return
        self._seen.setdefault(index, time.monotonic())
        self._forget(index)
        if not event.task.done:
            self.statuses[index] = event.task.status
            self.task_ids[index] = event.task.id
            self._counts[event.task.status] += 1

    def _forget(self, index: int) -> None:
        self.task_ids.pop(index, None)
        status = self.statuses.pop(index, None)
        if status is not None:
            self._counts[status] -= 1

    def took(self, index: int) -> float | None:
        """Seconds from input ``index``'s first status event to now (once), or None.

        None when no event came for it in this run (read from the journal,
        or refused before any task was created).
        """
        seen = self._seen.pop(index, None)
        return None if seen is None else time.monotonic() - seen

    def add(self, outcome: Outcome) -> None:
        """Count one reported outcome."""
        # A task given up on (a timeout) is no longer in flight for us either.
        self._forget(outcome.index)
        if outcome.ok:
            self.ok += 1
        else:
            self.failed += 1
        if outcome.from_journal:
            self.resumed += 1

    def in_flight(self) -> int:
        """Tasks created at the provider and not yet finished, from the status events."""
        return len(self.statuses)

    def in_flight_text(self) -> str:
        """``5 in flight (2 queued, 3 processing)``; no parentheses when none is."""
        counts = self._counts
        shown = ", ".join(
            f"{counts[status]} {status}"
            for status in (TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.UNKNOWN)
            if counts[status]
        )
        return f"{self.in_flight()} in flight" + (f" ({shown})" if shown else "")

    def elapsed(self) -> float:
        """Seconds since the batch started."""
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Finished inputs per second, not counting those read from a journal."""
        return (self.finished - self.resumed) / max(self.elapsed(), 1e-6)

    def eta(self) -> str:
        """The time left at the current rate, or ``?``."""
        rate = self.rate()
        if self.total is None or rate <= 0 or self.shared:
            return "?"
        return duration(max(0, self.total - self.finished) / rate)

    def line(self, *, count: bool = True) -> str:
        """The counts on one line (``count``: led by ``finished/total``)."""
        parts = [
            f"{self.ok} done",
            f"{self.failed} failed",
            self.in_flight_text(),
            f"{self.rate():.1f}/s",
        ]
        if not self.shared:  # a worker's share is not known: no time left to tell
            parts.append(f"ETA {self.eta()}")
        if self.resumed:
            parts.insert(2, f"{self.resumed} from journal")
        waiting = self.waiting() if self.waiting is not None else None
        if waiting:
            parts.append(waiting)
        if count:
            total = "?" if self.total is None else str(self.total)
            shared = " (this worker's share)" if self.shared else ""
            parts.insert(0, f"{self.finished}/{total}{shared}")
        return ", ".join(parts)


class RichBar:
    """A live progress bar on standard error, drawn by ``rich`` (the ``cli`` extra)."""

    def __init__(self, label: str, total: int | None) -> None:
        # Imported here: rich is optional, and slow to import for --json runs.
        from rich.console import Console  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        from rich.progress import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            # Results on stdout stay on stdout when it is a file or a pipe.
            redirect_stdout=_isatty(sys.stdout),
            redirect_stderr=True,
        )
        self._task = self._progress.add_task(label, total=total, stats="")

    def start(self) -> None:
        """Start drawing."""
        self._progress.start()

    def update(self, stats: Stats) -> None:
        """Redraw with these counts."""
        self._progress.update(self._task, completed=stats.finished, stats=stats.line(count=False))

    def stop(self) -> None:
        """Stop drawing and leave the last state on screen."""
        self._progress.stop()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rich_bar(label: str, total: int | None) -> RichBar | None:
    """A live bar if standard error is a terminal and rich is installed, else None."""
    if not _isatty(sys.stderr):
        return None
    try:
        return RichBar(label, total)
    except ImportError:
        return None


class Progress:
    """Shows a batch's progress on standard error while it runs.

    A live ``rich`` bar on a terminal; otherwise (no rich, or stderr is a file)
    a plain line every ``interval`` seconds and one at the end.
    """

    def __init__(self, stats: Stats, label: str, *, enabled: bool, interval: float) -> None:
        self._stats = stats
        self._label = label
        self._enabled = enabled
        self._interval = interval
        self._bar: RichBar | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if not self._enabled:
            return self
        self._bar = _rich_bar(self._label, self._stats.total)
        if self._bar is not None:
            self._bar.start()
            self._bar.update(self._stats)
        self._ticker = asyncio.create_task(self._tick(), name="banana_async-cli-progress")
        return self

    async def _tick(self) -> None:
        interval = RICH_REFRESH if self._bar is not None else self._interval
        while True:
            await asyncio.sleep(interval)
            self._show()

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.update(self._stats)
        else:
            to_stderr(f"{self._label}: {self._stats.line()}")

    def update(self) -> None:
        """Note a finished input (the plain lines only come every ``interval``)."""
        if self._bar is not None:
            self._bar.update(self._stats)

    def on_status(self, event: TaskEvent) -> None:
        """The batch's ``on_status`` listener: count the event (the next redraw shows it)."""
        self._stats.on_status(event)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(self._stats)
            self._bar.stop()
        elif exc_type is None:
            to_stderr(f"{self._label}: {self._stats.line()}")
