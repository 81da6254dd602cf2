"""The gallery of an output folder: one static ``index.html`` made from its ``manifest.jsonl``.

The page needs no server, no network and no framework: it is opened from
disk, and keeps working when the folder is copied elsewhere, because every
image is named by a URL-quoted path relative to the page. Every string from
the manifest (prompts, errors, task ids, which the provider and the user
wrote) is HTML-escaped, and a Content-Security-Policy lets only the page's
own script and style run: a prompt holding ``<script>`` shows as text.

Reading is lenient where a batch may leave marks: a damaged line (a run
killed mid-write, an edit by hand) is reported and skipped, never fatal.
But the page names only image files inside the folder: a manifest edited to
name an ``.svg``, an ``.html`` or a link to a file outside the folder gets
that entry listed as refused, not shown, and a ``..`` is never followed.

The manifest keeps every run into the folder (each line says which run
wrote it), and so does the page: it says how many runs it shows and which
images the latest one made.

Only the standard library renders the page (:func:`html.escape` and
:class:`string.Template`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import json
import math
import os
import secrets
import string
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import attrs

from banana_async.cli.output import for_terminal, one_line, to_stderr
from banana_async.cli.progress import duration
from banana_async.errors import InvalidRequestError

__all__ = [
    "GALLERY",
    "IMAGE_SUFFIXES",
    "MANIFEST",
    "Damaged",
    "Entry",
    "Gallery",
    "gallery_from",
    "gallery_line",
    "make_gallery",
    "new_run",
    "read_gallery",
    "render_gallery",
    "warn_damaged",
    "write_gallery",
]

GALLERY: Final = "index.html"
"""The page's file name in the output folder."""

MANIFEST: Final = "manifest.jsonl"
"""The file the gallery is made from (the one ``batch`` and ``demo`` append to)."""

IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
"""The only files the page shows: what a browser draws as an image, nothing it runs."""

_UNCONFIRMED: Final = "UnconfirmedCreateError"

# How many damaged lines a command names on stderr (the page lists them all).
_DAMAGED_SHOWN: Final = 5

# The manifest's keys that hold text (or null), and those that hold a whole number.
_TEXT_KEYS: Final = (
    "prompt",
    "task_id",
    "status",
    "file",
    "error",
    "error_type",
    "model",
    "size",
    "resolution",
    "run",
)
_NUMBER_KEYS: Final = ("index", "line")


@attrs.frozen
class Entry:
    """One input of the batch as the page shows it.

    Attributes:
        where: ``line N`` of the prompt file, or ``#N`` (the input's index).
        prompt: The prompt, if known.
        model: The model asked for.
        size: The aspect ratio asked for, or None for the model's default.
        resolution: The resolution asked for, if any.
        task_id: The provider's task id, if one was created.
        seconds: How long the run spent on it, from the task's creation
            (or the run's resume) to the saved image; None if not known.
        error: Why it made no image (None for an image).
        error_type: The error's class name, if recorded.
        file: The image's path inside the folder (``/``-separated, relative
            to it), if it is there and may be shown.
        from_journal: Whether the run read it from its journal.
        run: When the run that reported it last started (the manifest's
            ``run``), if recorded.
        refused: Why the page does not show the file the manifest names
            (not an image, or outside the folder), or None.
    """

    where: str
    prompt: str | None
    model: str | None
    size: str | None
    resolution: str | None
    task_id: str | None
    seconds: float | None
    error: str | None
    error_type: str | None
    file: str | None
    from_journal: bool
    run: str | None = None
    refused: str | None = None


@attrs.frozen
class Damaged:
    """A manifest line that could not be read, and why; it is skipped."""

    line: int
    reason: str


@attrs.frozen
class Gallery:
    """What the page shows: the images, the inputs without one, the lines skipped.

    Attributes:
        folder: The output folder.
        images: One entry per image made (per task id), in input order.
        missing: Images the manifest names that are not in the folder.
        failed: Inputs whose last outcome is a failure (a failed or timed-out
            task, a bad input, a failed download).
        unconfirmed: Inputs whose create was in flight when a run stopped:
            a task may exist (and be billed) that nobody knows the id of.
        damaged: The manifest lines that were skipped.
        refused: Images whose file the page will not show: not an image
            type, or not inside the folder (a manifest edited by hand).
        runs: How many runs wrote the manifest (lines without a ``run``,
            from older versions, count as one).
        run: The run whose images :attr:`run_images` counts: the one asked
            for (the batch or demo that just ran), else the latest.
    """

    folder: Path
    images: tuple[Entry, ...]
    missing: tuple[Entry, ...]
    failed: tuple[Entry, ...]
    unconfirmed: tuple[Entry, ...]
    damaged: tuple[Damaged, ...]
    refused: tuple[Entry, ...] = ()
    runs: int = 0
    run: str | None = None

    @property
    def path(self) -> Path:
        """Where the page is (or goes): ``index.html`` in the folder."""
        return self.folder / GALLERY

    @property
    def run_images(self) -> int:
        """How many of the images :attr:`run` reported (all of them, if runs are not recorded)."""
        if self.run is None:
            return len(self.images)
        return sum(1 for entry in self.images if entry.run == self.run)

    def counts(self) -> dict[str, int]:
        """How many of each: images, missing, failed, unconfirmed, damaged, refused."""
        return {
            "images": len(self.images),
            "missing": len(self.missing),
            "failed": len(self.failed),
            "unconfirmed": len(self.unconfirmed),
            "damaged": len(self.damaged),
            "refused": len(self.refused),
        }

    def record(self) -> dict[str, Any]:
        """The page's path and counts, for ``--json``: also ``runs`` and ``run_images``."""
        return {
            "gallery": str(self.path),
            **self.counts(),
            "runs": self.runs,
            "run_images": self.run_images,
        }


def new_run() -> str:
    """The mark of a run that starts now, for the ``run`` of its manifest lines.

    The start time in UTC, to the microsecond: it tells the runs into one
    folder apart, and the page shows it.
    """
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check(record: Any) -> str | None:
    """What is wrong with one decoded manifest line, or None if it is usable."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("ok"), bool):
        return '"ok" is not true or false'
    for key in _TEXT_KEYS:
        if not isinstance(record.get(key), str | None):
            return f'"{key}" is not text'
    for key in _NUMBER_KEYS:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f'"{key}" is not a whole number'
    seconds = record.get("seconds")
    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        return '"seconds" is not a duration'
    return None


def _parse(data: bytes) -> tuple[list[dict[str, Any]], list[Damaged]]:
    """The manifest's usable records, in order, and its damaged lines."""
    records: list[dict[str, Any]] = []
    damaged: list[Damaged] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue  # the end of the file, or a blank line: nothing lost
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            damaged.append(Damaged(number, "not UTF-8 text"))
            continue
        except ValueError:
            # Most often the last line of a run killed while writing it.
            damaged.append(Damaged(number, "not valid JSON (cut short?)"))
            continue
        problem = _check(record)
        if problem is not None:
            damaged.append(Damaged(number, problem))
            continue
        records.append(record)
    return records, damaged


def _input_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """Which input a record is about: reruns of one file report the same key."""
    return (record.get("index"), record.get("line"), record.get("prompt"))


def _locate(recorded: str, root: Path) -> tuple[str | None, str | None]:
    """Where in the folder ``root`` (resolved) the file a manifest names is.

    Returns:
        Its ``/``-separated path relative to ``root`` (None if it is not
        there), and why it is refused (None if it may be shown).
    """
    path = Path(recorded)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None, f"a file that is not an image ({path.name})"
    parts = path.parts[1:] if path.anchor else path.parts
    if ".." in parts:
        # A run started beside its --out writes "../out/x.png": only what
        # follows the last ".." can name a place inside the folder.
        parts = parts[len(parts) - parts[::-1].index("..") :]
    # The manifest's path is relative to wherever the run was started (or
    # absolute), and the page must keep working in a copied folder: the
    # longest end of it that names a file in the folder is the one. No end
    # holds "..", so none leads out of the folder but through a link.
    for start in range(len(parts)):
        candidate = root.joinpath(*parts[start:])
        if not candidate.is_file():
            continue
        if not candidate.resolve().is_relative_to(root):
            return None, f"a link to a file outside the folder ({path.name})"
        return "/".join(parts[start:]), None
    return None, None


def _entry(record: Mapping[str, Any], root: Path) -> Entry:
    line, index = record.get("line"), record.get("index")
    where = f"line {line}" if line is not None else f"#{index}" if index is not None else "-"
    file = refused = None
    recorded = record.get("file")
    if recorded:
        file, refused = _locate(recorded, root)
    seconds = record.get("seconds")
    return Entry(
        where=where,
        prompt=record.get("prompt"),
        model=record.get("model"),
        size=record.get("size"),
        resolution=record.get("resolution"),
        task_id=record.get("task_id"),
        seconds=float(seconds) if seconds is not None else None,
        error=record.get("error"),
        error_type=record.get("error_type"),
        file=file,
        from_journal=bool(record.get("from_journal")),
        run=record.get("run"),
        refused=refused,
    )


def _position(entry: Entry) -> tuple[int, int]:
    """Sort key: input order (``line N`` / ``#N``); entries without one go last."""
    number = entry.where.removeprefix("line ").removeprefix("#")
    return (0, int(number)) if number.isdigit() else (1, 0)


def gallery_from(
    records: Iterable[Mapping[str, Any]],
    folder: Path,
    damaged: Iterable[Damaged] = (),
    *,
    run: str | None = None,
) -> Gallery:
    """Sort a manifest's records into what the page shows.

    Every image made is shown once (a resumed run reports its journal's
    images again, under the same task id). An input without an image is
    listed by its last record only, and not at all once a later record of
    it made an image (``--retry-failed``, ``--resend-unconfirmed``).

    Args:
        records: The manifest's records, in file order.
        folder: The output folder (images are looked for there).
        damaged: The lines skipped while reading.
        run: The run whose images to count apart (see :func:`new_run`);
            default the one that wrote the last line.
    """
    images: dict[object, Mapping[str, Any]] = {}
    latest: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    runs: set[str | None] = set()
    last_run = None
    for number, record in enumerate(records):
        latest[_input_key(record)] = record
        runs.add(record.get("run"))  # None: the lines of older versions, as one run
        last_run = record.get("run") or last_run
        if record["ok"]:
            # A hand-made line may lack the task id: then it is its own image.
            images[record.get("task_id") or ("line", number)] = record
    root = folder.resolve()
    shown = [_entry(record, root) for record in images.values()]
    without = [_entry(record, root) for record in latest.values() if not record["ok"]]
    return Gallery(
        folder=folder,
        images=tuple(sorted((e for e in shown if e.file is not None), key=_position)),
        missing=tuple(
            sorted((e for e in shown if e.file is None and e.refused is None), key=_position)
        ),
        failed=tuple(sorted((e for e in without if e.error_type != _UNCONFIRMED), key=_position)),
        unconfirmed=tuple(
            sorted((e for e in without if e.error_type == _UNCONFIRMED), key=_position)
        ),
        damaged=tuple(damaged),
        refused=tuple(sorted((e for e in shown if e.refused is not None), key=_position)),
        runs=len(runs),
        run=run if run is not None else last_run,
    )


def read_gallery(folder: Path, *, run: str | None = None) -> Gallery:
    """Read ``folder``'s manifest into what its page shows.

    Args:
        folder: The ``--out`` folder of a batch or demo.
        run: The run whose images to count apart (see :func:`gallery_from`).

    Raises:
        InvalidRequestError: the folder or its manifest is missing, or
            ``folder`` is a file.
        OSError: the manifest cannot be read.
    """
    if folder.exists() and not folder.is_dir():
        raise InvalidRequestError(
            f"{folder} is a file, not a folder (give the --out folder of a batch or demo)"
        )
    if not folder.is_dir():
        raise InvalidRequestError(f"{folder}: no such folder (give the --out of a batch or demo)")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise InvalidRequestError(
            f"{folder} has no {MANIFEST}: it is written by `banana-async batch` and "
            "`banana-async demo` in their --out folder"
        )
    records, damaged = _parse(manifest.read_bytes())
    return gallery_from(records, folder, damaged, run=run)


def write_gallery(folder: Path, *, run: str | None = None) -> Gallery:
    """Write ``folder/index.html`` from ``folder/manifest.jsonl``.

    The page replaces an earlier one in one step: a browser never sees
    half a page. It is readable by its owner only, like the manifest.

    Args:
        folder: The ``--out`` folder of a batch or demo.
        run: The run whose images to count apart (see :func:`gallery_from`).

    Returns:
        What the page shows; its :attr:`~Gallery.path` is the page.

    Raises:
        InvalidRequestError: the folder or its manifest is missing.
        OSError: the manifest cannot be read or the page cannot be written.
    """
    gallery = read_gallery(folder, run=run)
    page = render_gallery(gallery).encode("utf-8")
    temporary = folder / f".banana-gallery-{secrets.token_hex(8)}.tmp"
    # Owner-only whatever the umask, as the manifest is (open_manifest): the
    # page lists the same prompts and errors. The rename keeps the mode.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(page)
        os.replace(temporary, gallery.path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return gallery


def warn_damaged(gallery: Gallery) -> None:
    """Say on stderr which manifest lines were skipped (the first few; the page has all)."""
    manifest = gallery.folder / MANIFEST
    for item in gallery.damaged[:_DAMAGED_SHOWN]:
        to_stderr(f"warning: {manifest} line {item.line} is damaged ({item.reason}): skipped")
    more = len(gallery.damaged) - _DAMAGED_SHOWN
    if more > 0:
        to_stderr(f"warning: {more} more damaged line(s) skipped, listed on {gallery.path}")


async def make_gallery(folder: Path, run: str | None = None) -> Gallery | None:
    """Write the gallery at the end of a batch or demo; return what it shows, or None.

    The batch's work is done and saved by then: a page that cannot be
    written is a warning, not the batch's failure.

    Args:
        folder: The batch's ``--out``.
        run: The batch's run (see :func:`new_run`), whose images the
            summary counts apart.
    """
    try:
        gallery = await asyncio.to_thread(write_gallery, folder, run=run)
    except (OSError, InvalidRequestError) as exc:
        to_stderr(f"warning: no gallery written: {one_line(exc)}")
        return None
    warn_damaged(gallery)
    return gallery


def gallery_line(gallery: Gallery) -> str:
    """The summary's line about the page: where it is, and what it shows.

    After a rerun into the same folder the page shows every run's images,
    more than the summary above it counted: the line says so.
    """
    page = gallery.path
    shows = ""
    if gallery.runs > 1:
        shows = (
            f" (every run into this folder: {_plural(len(gallery.images), 'image')}, "
            f"{gallery.run_images} from this run)"
        )
    # The URL too: many terminals open it on a click.
    return f"gallery: {page}{shows}; open it in a browser: {page.resolve().as_uri()}"


# -- the page -----------------------------------------------------------------------------


def _text(value: str | None, empty: str = "-") -> str:
    """Text from the manifest, safe inside HTML (and inside a quoted attribute)."""
    if value is None or value == "":
        return empty
    # for_terminal first: lone surrogates cannot even be written as UTF-8,
    # and control characters would be invisible.
    return html.escape(for_terminal(value), quote=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 60 else duration(value)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _started(run: str) -> str:
    """A run's mark as the page shows it: its start, to the second, in UTC."""
    try:
        when = datetime.fromisoformat(run)
    except ValueError:
        return run  # a hand-made mark: shown as it is
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if when.tzinfo is not None else "")


def _facts(entry: Entry, latest: str | None = None) -> str:
    size = entry.size or "default"
    if entry.resolution:
        size += f", {entry.resolution}"
    rows = [
        ("model", _text(entry.model)),
        ("size", _text(size)),
        ("task", _text(entry.task_id)),
        ("time", _seconds(entry.seconds) + (" (from journal)" if entry.from_journal else "")),
        ("input", _text(entry.where)),
    ]
    if entry.run is not None and latest is not None:
        # Only when several runs share the page: which one reported it.
        mark = " (the latest)" if entry.run == latest else ""
        rows.append(("run", _text(_started(entry.run)) + mark))
    return "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)


def _card(entry: Entry, latest: str | None) -> str:
    prompt = _text(entry.prompt)
    assert entry.file is not None
    # Each part of the path quoted, the "/" between them kept.
    src = html.escape(quote(entry.file, safe="/"), quote=True)
    return (
        f'<figure class="card" data-prompt="{_text(entry.prompt, "")}">'
        f'<a class="full" href="{src}" target="_blank">'
        f'<img src="{src}" alt="{prompt}" loading="lazy" decoding="async"></a>'
        f'<figcaption><p class="prompt">{prompt}</p><dl>{_facts(entry, latest)}</dl>'
        "</figcaption></figure>"
    )


def _row(entry: Entry, detail: str) -> str:
    kind = f" ({_text(entry.error_type)})" if entry.error_type else ""
    return (
        f'<li class="item" data-prompt="{_text(entry.prompt, "")}">'
        f'<p class="prompt">{_text(entry.prompt)}</p>'
        f'<p class="error">{detail}{kind}</p><dl>{_facts(entry)}</dl></li>'
    )


def _section(
    title: str, entries: tuple[Entry, ...], detail: str | Callable[[Entry], str] | None = None
) -> str:
    """A list of entries without an image; ``detail`` (HTML) says why, else each one's error."""
    if not entries:
        return ""

    def why(entry: Entry) -> str:
        if detail is None:
            return _text(entry.error, "failed")
        return detail if isinstance(detail, str) else detail(entry)

    rows = "".join(_row(entry, why(entry)) for entry in entries)
    return f'<section><h2>{title} ({len(entries)})</h2><ul class="list">{rows}</ul></section>'


def _damaged(gallery: Gallery) -> str:
    if not gallery.damaged:
        return ""
    rows = "".join(f"<li>line {item.line}: {_text(item.reason)}</li>" for item in gallery.damaged)
    return (
        f"<section><h2>Damaged manifest lines, skipped ({len(gallery.damaged)})</h2>"
        f'<ul class="damaged">{rows}</ul></section>'
    )


def _counts(gallery: Gallery) -> str:
    parts = [_plural(len(gallery.images), "image")]
    if gallery.missing:
        parts.append(f"{len(gallery.missing)} not in this folder")
    parts += [f"{len(gallery.failed)} failed", f"{len(gallery.unconfirmed)} unconfirmed"]
    if gallery.refused:
        parts.append(f"{len(gallery.refused)} refused")
    if gallery.damaged:
        parts.append(_plural(len(gallery.damaged), "damaged manifest line") + " skipped")
    return " · ".join(parts)


def _latest(gallery: Gallery) -> str | None:
    """The latest run's mark, when the page shows more than one run; else None."""
    return gallery.run if gallery.runs > 1 else None


def _runs(gallery: Gallery) -> str:
    """What the counts cover, when more than one run wrote into the folder."""
    latest = _latest(gallery)
    if latest is None:
        return ""
    return (
        f'<p class="runs" id="runs">All {gallery.runs} runs into this folder are shown '
        "(each run appends to its manifest.jsonl): "
        f"{_plural(len(gallery.images), 'image')} in all, {gallery.run_images} "
        f"of them from the latest run, started {_text(_started(latest))}.</p>"
    )


_STYLE: Final = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:1em;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.5em 0 .5em}
.counts{margin:.2em 0 1em;color:#444}
#filter{font:inherit;padding:.4em .6em;width:min(30em,100%);box-sizing:border-box}
#shown{margin-left:.8em;color:#666}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1em}
.card{margin:0;border:1px solid #ddd;border-radius:6px;overflow:hidden;background:#fafafa}
.card img{display:block;width:100%;height:200px;object-fit:contain;background:#eee}
figcaption{padding:.5em .7em}.prompt{margin:0 0 .4em;overflow-wrap:anywhere;white-space:pre-wrap}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 .6em;margin:0;font-size:.85em;color:#555}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}
.list{list-style:none;padding:0}.list li{border-left:4px solid #c33;padding:.3em .8em;margin:.6em 0}
.error{color:#a11;margin:0 0 .3em;overflow-wrap:anywhere}
.damaged{color:#a60}
.runs{margin:-.6em 0 1em;color:#444}
[hidden]{display:none!important}
dialog{padding:0;border:0;max-width:95vw;max-height:95vh;background:#111}
dialog img{display:block;max-width:95vw;max-height:90vh}
dialog p{margin:0;padding:.4em .8em;color:#eee;background:#111}
"""

# Plain DOM code: a filter over the prompts, and a full-size view on click
# (without script the link opens the image itself).
_SCRIPT: Final = """
(function () {
  "use strict";
  var box = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var items = Array.prototype.slice.call(document.querySelectorAll("[data-prompt]"));
  var prompts = items.map(function (item) {
    return item.getAttribute("data-prompt").toLowerCase();
  });
  function filter() {
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var count = 0;
    items.forEach(function (item, i) {
      var match = words.every(function (word) { return prompts[i].indexOf(word) !== -1; });
      item.hidden = !match;
      if (match) { count += 1; }
    });
    shown.textContent = words.length ? count + " of " + items.length + " shown" : "";
  }
  box.addEventListener("input", filter);
  filter();
  var viewer = document.getElementById("viewer");
  var big = viewer.querySelector("img");
  var caption = viewer.querySelector("p");
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a.full") : null;
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) {
      return;
    }
    event.preventDefault();
    big.src = link.getAttribute("href");
    big.alt = link.querySelector("img").alt;
    caption.textContent = big.alt;
    viewer.showModal();
  });
  viewer.addEventListener("click", function () { viewer.close(); });
})();
"""


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# Only this page's own script and style may run, whatever a prompt holds;
# no request leaves the page but the images it names.
_POLICY: Final = (
    "default-src 'none'; img-src 'self' file: data:; "
    f"style-src {_hash(_STYLE)}; script-src {_hash(_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)

_PAGE: Final = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="$policy">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$style</style>
</head>
<body>
<header>
<h1>$title</h1>
<p class="counts" id="counts">$counts</p>
$runs
<label>Filter the prompts: <input type="search" id="filter" placeholder="words to look for"
 autocomplete="off"></label><span id="shown"></span>
</header>
<main>
$images
$missing
$failed
$unconfirmed
$refused
$damaged
</main>
<dialog id="viewer"><img alt=""><p></p></dialog>
<script>$script</script>
</body>
</html>
""")


def render_gallery(gallery: Gallery) -> str:
    """The page for ``gallery`` as HTML text (every manifest string escaped)."""
    images = ""
    if gallery.images:
        latest = _latest(gallery)
        cards = "".join(_card(entry, latest) for entry in gallery.images)
        images = (
            f"<section><h2>Images ({len(gallery.images)})</h2>"
            f'<div class="grid">{cards}</div></section>'
        )
    elif not gallery.missing:
        images = "<p>No image in this folder yet.</p>"
    return _PAGE.substitute(
        policy=html.escape(_POLICY, quote=True),
        title=_text(f"banana-async gallery: {gallery.folder.resolve().name}"),
        style=_STYLE,
        counts=_counts(gallery),
        runs=_runs(gallery),
        images=images,
        missing=_section(
            "Images not in this folder",
            gallery.missing,
            "the manifest names an image "
            "that is not in this folder (moved, or saved by a run with another --out)",
        ),
        failed=_section("Failed", gallery.failed),
        unconfirmed=_section("Unconfirmed", gallery.unconfirmed),
        refused=_section(
            "Files refused",
            gallery.refused,
            lambda entry: (
                "the page shows only image files (.png, .jpg, .jpeg, .webp, .gif) "
                f"inside this folder; the manifest names {_text(entry.refused)}"
            ),
        ),
        damaged=_damaged(gallery),
        script=_SCRIPT,
    )
