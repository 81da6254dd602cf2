"""The gallery of an output folder: one static ``index.html`` made from its ``manifest.jsonl``.

The page needs no server, no network and no framework: it is opened from
disk, and keeps working when the folder is copied elsewhere, because every
image is named by a URL-quoted path relative to the page. Every string from
the manifest (prompts, errors, task ids, which the provider and the user
wrote) is HTML-escaped, and a Content-Security-Policy lets only the page's
own script and style run: a prompt holding ``<script>`` shows as text.

Reading is lenient where a batch may leave marks: a damaged line (a run
killed mid-write, an edit by hand) is reported and skipped, never fatal.
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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import attrs

from banana_async.cli.output import for_terminal, one_line, to_stderr
from banana_async.cli.progress import duration
from banana_async.errors import InvalidRequestError

__all__ = [
    "GALLERY",
    "MANIFEST",
    "Damaged",
    "Entry",
    "Gallery",
    "gallery_from",
    "make_gallery",
    "read_gallery",
    "render_gallery",
    "warn_damaged",
    "write_gallery",
]

GALLERY: Final = "index.html"
"""The page's file name in the output folder."""

MANIFEST: Final = "manifest.jsonl"
"""The file the gallery is made from (the one ``batch`` and ``demo`` append to)."""

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
        file: The image's file name in the folder, if it is there.
        from_journal: Whether the run read it from its journal.
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
    """

    folder: Path
    images: tuple[Entry, ...]
    missing: tuple[Entry, ...]
    failed: tuple[Entry, ...]
    unconfirmed: tuple[Entry, ...]
    damaged: tuple[Damaged, ...]

    @property
    def path(self) -> Path:
        """Where the page is (or goes): ``index.html`` in the folder."""
        return self.folder / GALLERY

    def counts(self) -> dict[str, int]:
        """How many of each: images, missing, failed, unconfirmed, damaged."""
        return {
            "images": len(self.images),
            "missing": len(self.missing),
            "failed": len(self.failed),
            "unconfirmed": len(self.unconfirmed),
            "damaged": len(self.damaged),
        }


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


def _entry(record: Mapping[str, Any], folder: Path) -> Entry:
    line, index = record.get("line"), record.get("index")
    where = f"line {line}" if line is not None else f"#{index}" if index is not None else "-"
    file = None
    recorded = record.get("file")
    if recorded:
        # By name only: the manifest's path is relative to wherever the run
        # was started, and the page must keep working in a copied folder.
        name = Path(recorded).name
        if name and (folder / name).is_file():
            file = name
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
    )


def _position(entry: Entry) -> tuple[int, int]:
    """Sort key: input order (``line N`` / ``#N``); entries without one go last."""
    number = entry.where.removeprefix("line ").removeprefix("#")
    return (0, int(number)) if number.isdigit() else (1, 0)


def gallery_from(
    records: Iterable[Mapping[str, Any]], folder: Path, damaged: Iterable[Damaged] = ()
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
    """
    images: dict[object, Mapping[str, Any]] = {}
    latest: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for number, record in enumerate(records):
        latest[_input_key(record)] = record
        if record["ok"]:
            # A hand-made line may lack the task id: then it is its own image.
            images[record.get("task_id") or ("line", number)] = record
    shown = [_entry(record, folder) for record in images.values()]
    without = [_entry(record, folder) for record in latest.values() if not record["ok"]]
    return Gallery(
        folder=folder,
        images=tuple(sorted((e for e in shown if e.file is not None), key=_position)),
        missing=tuple(sorted((e for e in shown if e.file is None), key=_position)),
        failed=tuple(sorted((e for e in without if e.error_type != _UNCONFIRMED), key=_position)),
        unconfirmed=tuple(
            sorted((e for e in without if e.error_type == _UNCONFIRMED), key=_position)
        ),
        damaged=tuple(damaged),
    )


def read_gallery(folder: Path) -> Gallery:
    """Read ``folder``'s manifest into what its page shows.

    Raises:
        InvalidRequestError: the folder or its manifest is missing.
        OSError: the manifest cannot be read.
    """
    if not folder.is_dir():
        raise InvalidRequestError(f"{folder}: no such folder (give the --out of a batch or demo)")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise InvalidRequestError(
            f"{folder} has no {MANIFEST}: it is written by `banana-async batch` and "
            "`banana-async demo` in their --out folder"
        )
    records, damaged = _parse(manifest.read_bytes())
    return gallery_from(records, folder, damaged)


def write_gallery(folder: Path) -> Gallery:
    """Write ``folder/index.html`` from ``folder/manifest.jsonl``.

    The page replaces an earlier one in one step: a browser never sees
    half a page.

    Args:
        folder: The ``--out`` folder of a batch or demo.

    Returns:
        What the page shows; its :attr:`~Gallery.path` is the page.

    Raises:
        InvalidRequestError: the folder or its manifest is missing.
        OSError: the manifest cannot be read or the page cannot be written.
    """
    gallery = read_gallery(folder)
    page = render_gallery(gallery).encode("utf-8")
    temporary = folder / f".banana-gallery-{secrets.token_hex(8)}.tmp"
    # Not mkstemp, whose files are private: the page gets the mode of any
    # new file under the umask, as the images do.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666)
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


async def make_gallery(folder: Path) -> Path | None:
    """Write the gallery at the end of a batch or demo; return its path, or None.

    The batch's work is done and saved by then: a page that cannot be
    written is a warning, not the batch's failure.
    """
    try:
        gallery = await asyncio.to_thread(write_gallery, folder)
    except (OSError, InvalidRequestError) as exc:
        to_stderr(f"warning: no gallery written: {one_line(exc)}")
        return None
    warn_damaged(gallery)
    return gallery.path


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


def _facts(entry: Entry) -> str:
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
    return "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)


def _card(entry: Entry) -> str:
    prompt = _text(entry.prompt)
    assert entry.file is not None
    src = html.escape(quote(entry.file, safe=""), quote=True)
    return (
        f'<figure class="card" data-prompt="{_text(entry.prompt, "")}">'
        f'<a class="full" href="{src}" target="_blank">'
        f'<img src="{src}" alt="{prompt}" loading="lazy" decoding="async"></a>'
        f'<figcaption><p class="prompt">{prompt}</p><dl>{_facts(entry)}</dl></figcaption>'
        "</figure>"
    )


def _row(entry: Entry, detail: str) -> str:
    kind = f" ({_text(entry.error_type)})" if entry.error_type else ""
    return (
        f'<li class="item" data-prompt="{_text(entry.prompt, "")}">'
        f'<p class="prompt">{_text(entry.prompt)}</p>'
        f'<p class="error">{detail}{kind}</p><dl>{_facts(entry)}</dl></li>'
    )


def _section(title: str, entries: tuple[Entry, ...], detail: str | None = None) -> str:
    if not entries:
        return ""
    rows = "".join(
        _row(entry, _text(entry.error, "failed") if detail is None else detail) for entry in entries
    )
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
    if gallery.damaged:
        parts.append(_plural(len(gallery.damaged), "damaged manifest line") + " skipped")
    return " · ".join(parts)


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
<label>Filter the prompts: <input type="search" id="filter" placeholder="words to look for"
 autocomplete="off"></label><span id="shown"></span>
</header>
<main>
$images
$missing
$failed
$unconfirmed
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
        cards = "".join(_card(entry) for entry in gallery.images)
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
        images=images,
        missing=_section(
            "Images not in this folder",
            gallery.missing,
            "the manifest names an image "
            "that is not in this folder (moved, or saved by a run with another --out)",
        ),
        failed=_section("Failed", gallery.failed),
        unconfirmed=_section("Unconfirmed", gallery.unconfirmed),
        damaged=_damaged(gallery),
        script=_SCRIPT,
    )
