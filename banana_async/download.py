"""Save a completed task's image to disk, safely and atomically.

:func:`download_task_image` streams the image at a task's ``image_url`` into
a temporary file next to its destination and renames it into place only once
every byte has arrived and the bytes are known to be an image, so a reader of
the directory never sees a partial file. The file is named after the task id
(made safe by :func:`safe_file_stem`) with the extension of the image type
found in the bytes themselves (:func:`image_extension`), not the one the URL
or the server claims.

The request goes to the image host without the API key: only the headers the
session itself carries are sent.

A process killed mid-download (SIGKILL, a power cut) leaves its temporary
file behind. The next download into that directory removes such leftovers
(:func:`_sweep_stale_parts`), never one that a live download, in this process
or another, is still writing: a writer holds an exclusive ``flock`` on its
temporary file for the file's whole life, and the OS drops it when the
process dies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import fcntl
except ImportError:  # Windows: no flock; stale files are told by their age alone
    _fcntl = None
else:
    _fcntl = fcntl

from banana_async import _transport
from banana_async._png import PNG_SIGNATURE
from banana_async._transport import DownloadSink, shown_url
from banana_async.dialects import HTTPResponse, error_for_status
from banana_async.errors import DownloadError
from banana_async.models import TaskStatus, url_problem

if TYPE_CHECKING:
    import aiohttp

    from banana_async.models import Task

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "MAX_STEM_LENGTH",
    "DownloadSink",
    "download_task_image",
    "image_extension",
    "safe_file_stem",
]

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
"""A 4k PNG is a few tens of MiB at most; past 50 MiB it is not a generated image."""

MAX_STEM_LENGTH = 100
"""Longest stem :func:`safe_file_stem` returns, well under every file system's limit."""

# -- file names ---------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HASH_LENGTH = 12
# A safe id that already ends like a hashed stem is hashed too; otherwise the
# id "a_-<hash of 'a/'>" would get the very name that "a/" gets.
_LOOKS_HASHED = re.compile(rf"-[0-9a-f]{{{_HASH_LENGTH}}}\Z")
# Windows refuses these as a name's first dot-separated part, in any case
# ("con.png", "Nul.tar.gz").
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{n}" for n in range(10)} | {f"LPT{n}" for n in range(10)}
)


# A temporary file is named f".{stem}.{random}{_PART_SUFFIX}" (tempfile.mkstemp).
# The marker keeps the sweep off other programs' hidden ".part" files.
_PART_SUFFIX = ".banana.part"
_PART_NAME = re.compile(
    rf"\.[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_STEM_LENGTH - 1}}}\.[a-z0-9_]+"
    + re.escape(_PART_SUFFIX)
)


def _id_hash(task_id: str) -> str:
    # Ids come from JSON, which can carry lone surrogates; they must hash too.
    data = task_id.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:_HASH_LENGTH]


def safe_file_stem(task_id: str) -> str:
    """A file name stem for an opaque provider task id, safe on Linux, macOS and Windows.

    An id made of ``A-Z a-z 0-9 . _ -`` only, without uppercase letters, not
    starting with a dot, not a reserved Windows device name and at most
    ``MAX_STEM_LENGTH`` (100) characters long is its own stem. Any other id is
    sanitised (other characters become ``_``, a leading dot becomes ``_``, a
    reserved name gets a ``_`` prefix, the text is shortened) and gets
    ``-`` plus a short hash of the original id appended, so that two
    different ids never share a stem. Ids with uppercase letters are hashed
    too because macOS and Windows compare file names case-insensitively:
    ``Ab`` and ``aB`` would otherwise be one file there.

    Args:
        task_id: The provider's task id, any text.

    Returns:
        A non-empty stem of safe characters that does not start with a dot.
    """
    stem = _UNSAFE.sub("_", task_id)
    changed = (
        not stem or stem != task_id or stem != stem.lower() or bool(_LOOKS_HASHED.search(stem))
    )
    if stem.startswith("."):
        stem = "_" + stem[1:]
        changed = True
    if len(stem) > MAX_STEM_LENGTH:
        stem = stem[: MAX_STEM_LENGTH - _HASH_LENGTH - 1]
        changed = True
    if stem.partition(".")[0].upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
        changed = True
    if not changed:
        return stem
    stem = stem[: MAX_STEM_LENGTH - _HASH_LENGTH - 1] or "_"
    return f"{stem}-{_id_hash(task_id)}"


# -- image types ----------------------------------------------------------------------

_SNIFF_BYTES = 12
"""Enough leading bytes to tell every supported type apart (WEBP needs 12)."""

# Object stores serve files uploaded without a type under these; the bytes decide.
_GENERIC_BINARY_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def image_extension(head: bytes) -> str | None:
    """The file extension for an image's leading bytes, found by their magic numbers.

    Args:
        head: The first bytes of the file (12 are enough).

    Returns:
        ``.png``, ``.jpg``, ``.webp`` or ``.gif``; None for anything else.
    """
    if head.startswith(PNG_SIGNATURE):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ".webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    return None


class _ImageFile:
    """A sink that refuses non-images and writes an image to a temporary file.

    The temporary file sits in the destination directory, so that
    :meth:`commit` is one atomic rename on the same file system. File work is
    synchronous: a chunk is written as it arrives, which is quick next to the
    network, and it keeps the steps of the commit in a plain order.
    """

    def __init__(self, directory: Path, stem: str, url: str) -> None:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=_PART_SUFFIX, dir=directory)
        self._temp = Path(name)
        self._file = os.fdopen(fd, "wb")
        # Held until the file is renamed or removed, and dropped by the OS if
        # the process dies: the sign to a sweep that this file is still live.
        # A sweep holds a lock only for a moment, so waiting for it is brief.
        _lock(fd, wait=True)
        self._directory = directory
        self._stem = stem
        self._url = url
        self._head = b""
        self._extension: str | None = None
        self._committed = False

    def _refuse(self, what: str) -> DownloadError:
        return DownloadError(
            f"{shown_url(self._url)} is not an image: {what}",
            url=self._url,
            reason="not_an_image",
        )

    def begin(self, content_type: str, content_length: int | None) -> None:
        media_type = content_type.partition(";")[0].strip().lower()
        if not media_type.startswith("image/") and media_type not in _GENERIC_BINARY_TYPES:
            raise self._refuse(f"the server says its type is {media_type!r}")

    def write(self, chunk: bytes) -> None:
        if self._extension is None:
            self._head += chunk
            if len(self._head) >= _SNIFF_BYTES:
                self._identify()
        else:
            self._file.write(chunk)

    def _identify(self) -> None:
        extension = image_extension(self._head)
        if extension is None:
            shown = self._head[:_SNIFF_BYTES]
            raise self._refuse(f"its bytes are no PNG, JPEG, WEBP or GIF (starting {shown!r})")
        self._extension = extension
        self._file.write(self._head)
        self._head = b""

    def commit(self) -> Path:
        """Check a body shorter than the sniffing window, then move the file into place."""
        if self._extension is None:
            self._identify()
        assert self._extension is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        if _fcntl is None:
            self._file.close()  # Windows renames no open file
        self._temp.chmod(_file_mode())
        final = self._directory / (self._stem + self._extension)
        # Renamed before the close that drops the lock: a sweep never finds
        # this file unlocked under its temporary name.
        os.replace(self._temp, final)
        self._committed = True
        self._file.close()
        return final

    def discard(self) -> None:
        """Remove the temporary file, unless it was committed."""
        if self._committed:
            return
        if _fcntl is None:
            self._file.close()  # Windows removes no open file
        with contextlib.suppress(OSError):
            self._temp.unlink()
        self._file.close()


# -- leftovers of killed downloads ----------------------------------------------------

_SWEEP_INTERVAL = 300.0
"""Seconds before one process lists the same directory for leftovers again."""

_LOCKABLE_GRACE = 10.0
"""Age below which an unlocked temporary file is left alone: its writer may be
between creating it and locking it."""

_UNLOCKABLE_AGE = 3600.0
"""Where there is no flock (Windows, some network file systems), the age past
which a temporary file is taken for a leftover; a live download writes far
more often, and a stalled one times out long before."""

_MAX_SWEEP_MEMO = 1024

_last_sweeps: dict[str, float] = {}
"""Directory (absolute) -> ``time.monotonic()`` of its last sweep in this process."""


def _lock(fd: int, *, wait: bool) -> bool | None:
    """Take an exclusive flock on ``fd``.

    flock, not fcntl's record locks: a flock belongs to one open file, so a
    sweep in this process cannot take the lock of a download in this process,
    and closing some other descriptor of the file does not drop it.

    Returns:
        True when taken, False when someone else holds it (only without
        ``wait``), None when locks are unavailable here.
    """
    if _fcntl is None:
        return None
    flags = _fcntl.LOCK_EX if wait else _fcntl.LOCK_EX | _fcntl.LOCK_NB
    try:
        _fcntl.flock(fd, flags)
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock (ENOLCK, EOPNOTSUPP)
        return None
    return True


def _sweep_stale_parts(directory: Path, *, force: bool = False) -> list[Path]:
    """Remove the temporary files that dead downloads left in ``directory``.

    Only names that :class:`_ImageFile` makes are considered, and one is
    removed only when its lock can be taken at once (no live writer) and it is
    older than :data:`_LOCKABLE_GRACE`; without flock, only when older than
    :data:`_UNLOCKABLE_AGE`. A directory is listed at most once per
    :data:`_SWEEP_INTERVAL` per process, so that a batch of thousands of
    downloads into one directory lists it once. Failures are ignored: this is
    housekeeping, never a reason for a download to fail.

    Args:
        directory: The download directory.
        force: Sweep even if this directory was swept recently.

    Returns:
        The files removed.
    """
    key = os.path.abspath(directory)
    now = time.monotonic()
    last = _last_sweeps.get(key)
    if not force and last is not None and now - last < _SWEEP_INTERVAL:
        return []
    if len(_last_sweeps) >= _MAX_SWEEP_MEMO:  # a batch saving into many directories
        _last_sweeps.clear()
    _last_sweeps[key] = now
    try:
        with os.scandir(directory) as entries:
            candidates = [
                entry.path
                for entry in entries
                if _PART_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            ]
    except OSError:
        return []
    return [Path(path) for path in candidates if _remove_if_stale(path)]


def _remove_if_stale(path: str) -> bool:
    # O_NOFOLLOW and O_NONBLOCK: a symlink or FIFO swapped in under the name
    # since the listing is neither followed nor waited on.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        locked = _lock(fd, wait=False)
        if locked is False:
            return False  # a live download
        min_age = _LOCKABLE_GRACE if locked else _UNLOCKABLE_AGE
        checked = os.fstat(fd)
        if not stat.S_ISREG(checked.st_mode) or time.time() - checked.st_mtime < min_age:
            return False
        # The writer may have renamed the file into place since it was
        # opened: remove the name only while it is still the file checked.
        current = os.stat(path, follow_symlinks=False)
        if (current.st_dev, current.st_ino) != (checked.st_dev, checked.st_ino):
            return False
        os.unlink(path)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


# -- the download ---------------------------------------------------------------------


@functools.cache
def _file_mode() -> int:
    """The mode a new file gets under the process umask (mkstemp makes 0600 files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _prepare_directory(directory: Path) -> None:
    """Create ``directory`` if missing, and clear what killed downloads left in it."""
    directory.mkdir(parents=True, exist_ok=True)
    _sweep_stale_parts(directory)


def _check_url(task: Task) -> str:
    url = task.image_url
    if task.status is not TaskStatus.COMPLETED or not url:
        status = task.raw_status or task.status.value
        raise DownloadError(
            f"task {task.id} has no image to download (status {status!r})",
            url=url,
            reason="no_image_url",
        )
    problem = url_problem(url)
    if problem is not None:
        raise DownloadError(
            f"the image URL of task {task.id} {problem}: {shown_url(url)!r}",
            url=url,
            reason="bad_url",
        )
    return url


async def download_task_image(
    session: aiohttp.ClientSession,
    task: Task,
    dest: str | os.PathLike[str],
    *,
    timeout: aiohttp.ClientTimeout | float,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Path:
    """Stream a completed task's image into the directory ``dest``.

    The file is ``dest / (safe_file_stem(task.id) + extension)``, the
    extension being that of the type found in the bytes. It appears
    atomically, complete or not at all; an existing file of that name is
    replaced. The API key is never sent: the request carries only the
    session's own headers.

    Args:
        session: The session to download with.
        task: A completed task with an http(s) ``image_url``.
        dest: The directory to save into; created (with parents) if missing.
        timeout: Seconds for the whole download, or an aiohttp timeout.
        max_bytes: The largest image accepted.

    Returns:
        The path of the saved image.

    Raises:
        DownloadError: ``reason`` is ``no_image_url`` (the task is not
            completed or has no URL), ``bad_url`` (not an http(s) URL),
            ``not_an_image`` (the Content-Type or the bytes say so),
            ``too_large`` (over ``max_bytes``) or ``too_many_redirects``.
        APIStatusError: the image host answered with an error status.
        APIConnectionError: the connection failed or (APITimeoutError) timed out.
        OSError: the file could not be written.
        ValueError: ``max_bytes`` is not positive.
    """
    url = _check_url(task)
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
    if isinstance(timeout, int | float):
        timeout = _transport.make_timeout(total=float(timeout), connect=None)
    directory = Path(dest)
    _prepare_directory(directory)
    image = _ImageFile(directory, safe_file_stem(task.id), url)
    try:
        answer = await _transport.stream_to(
            session, url, image, timeout=timeout, max_bytes=max_bytes
        )
        if isinstance(answer, HTTPResponse):
            raise error_for_status(answer)
        return image.commit()
    finally:
        image.discard()
