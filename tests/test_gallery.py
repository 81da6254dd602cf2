"""The gallery page (``banana-async gallery``, ``batch --gallery``, the demo's): its HTML.

The page is read here as text, with the standard library's HTML parser; the
real-browser checks are in ``test_gallery_browser.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from banana_async._png import make_png
from banana_async.cli import main
from banana_async.cli.commands import batch, demo
from banana_async.cli.gallery import GALLERY, MANIFEST, read_gallery, render_gallery
from tests.test_cli import FAST, ServerThread, env, json_lines, run_main, threaded

__all__ = ["env", "threaded"]  # the fixtures, used here by name

PNG = make_png(8, 6, (200, 120, 40))


class Page(HTMLParser):
    """What a browser would make of the page: its elements, attributes and text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._inside: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._inside = tag

    def handle_endtag(self, tag: str) -> None:
        self._inside = None

    def handle_data(self, data: str) -> None:
        if self._inside == "script":
            self.scripts.append(data)
        elif self._inside == "style":
            self.styles.append(data)
        else:
            self.text.append(data)

    def all(self, tag: str, **having: str) -> list[dict[str, str | None]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and all(attrs.get(key) == value for key, value in having.items())
        ]

    def body(self) -> str:
        return " ".join(self.text)


def record(index: int, prompt: str | None, **fields: Any) -> dict[str, Any]:
    """A manifest line as ``batch`` writes it (ok, with an image, unless told)."""
    task_id = fields.pop("task_id", f"task{index:04d}")
    line: dict[str, Any] = {
        "index": index,
        "line": index + 1,
        "prompt": prompt,
        "task_id": task_id,
        "status": "completed",
        "file": f"out/{task_id}.png",
        "ok": True,
        "error": None,
        "from_journal": False,
        "model": "nano-banana-2",
        "size": "16:9",
        "resolution": None,
        "seconds": 2.5,
        "error_type": None,
    }
    line.update(fields)
    return line


def failed(index: int, prompt: str, error: str, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": "failed",
        "file": None,
        "ok": False,
        "error": error,
        "error_type": "TaskFailedError",
    }
    values.update(fields)
    return record(index, prompt, **values)


def unconfirmed(index: int, prompt: str) -> dict[str, Any]:
    """A manifest line of an input whose create was in flight when a run stopped."""
    return failed(
        index,
        prompt,
        "the create was in flight when the run stopped",
        task_id=None,
        status=None,
        error_type="UnconfirmedCreateError",
    )


def folder_with(
    tmp_path: Path, *lines: dict[str, Any] | str | bytes, images: Iterable[str] | None = None
) -> Path:
    """An output folder: a manifest of ``lines``, and an image for each ok line.

    Each ok line's image goes into the folder by its file name, as a batch
    saves it; or, when ``images`` is given, an image goes at each of these
    paths (relative to the folder) instead.
    """
    folder = tmp_path / "out"
    folder.mkdir(exist_ok=True)
    data = b""
    names = [] if images is None else list(images)
    for line in lines:
        if isinstance(line, dict):
            if images is None and line.get("ok") and line.get("file"):
                names.append(Path(line["file"]).name)
            data += json.dumps(line).encode() + b"\n"
        else:
            data += (line.encode() if isinstance(line, str) else line) + b"\n"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(PNG)
    (folder / MANIFEST).write_bytes(data)
    return folder


def counts(**nonzero: int) -> dict[str, int]:
    """What ``Gallery.counts()`` gives: the counts named, 0 for the others."""
    kinds = ("images", "missing", "failed", "unconfirmed", "damaged", "refused")
    assert set(nonzero) <= set(kinds)
    return {kind: nonzero.get(kind, 0) for kind in kinds}


def manifest_of(folder: Path) -> list[dict[str, Any]]:
    """The records of ``folder``'s manifest, in order."""
    return [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]


def page_of(folder: Path) -> tuple[str, Page]:
    text = render_gallery(read_gallery(folder))
    return text, Page(text)


def test_the_manifest_name_is_the_batchs() -> None:
    assert MANIFEST == batch.MANIFEST


def test_prompts_and_errors_are_escaped(tmp_path: Path) -> None:
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    folder = folder_with(
        tmp_path,
        record(0, evil + " a cat", task_id="t<b>1", model='"><script>alert(1)</script>'),
        failed(1, "<i>a dog</i>", "refused: <b>policy</b> & more"),
    )
    text, page = page_of(folder)
    # The page's own script, once; no element from the manifest.
    assert len(page.all("script")) == 1
    assert len(page.all("img", src="x")) == 0
    assert not page.all("b")
    assert not page.all("i")
    body = page.body()
    assert evil + " a cat" in body
    assert '"><script>alert(1)</script>' in body
    assert "t<b>1" in body
    assert "refused: <b>policy</b> & more" in body
    # The filter reads the prompt from an attribute: the same text, unharmed.
    prompts = [attrs["data-prompt"] for attrs in page.all("figure")]
    assert prompts == [evil + " a cat"]
    assert "&lt;script&gt;window.__pwned" in text


def test_only_the_pages_own_script_and_style_may_run(tmp_path: Path) -> None:
    _, page = page_of(folder_with(tmp_path, record(0, "a cat")))
    (meta,) = page.all("meta", **{"http-equiv": "Content-Security-Policy"})
    policy = meta["content"]
    assert policy is not None

    def source(text: str) -> str:
        digest = hashlib.sha256(text.encode()).digest()
        return f"'sha256-{base64.b64encode(digest).decode()}'"

    (script,) = page.scripts
    (style,) = page.styles
    assert f"script-src {source(script)};" in policy
    assert f"style-src {source(style)};" in policy
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    # No inline style or event handler, which the policy would block anyway.
    assert not any(
        key == "style" or key.startswith("on") for _, attrs in page.tags for key in attrs
    )


def test_images_are_named_relative_to_the_page_and_url_quoted(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        record(0, "a cat", task_id="abc", file="/somewhere/else/abc.png"),
        record(1, "a dog", task_id="we ird#1%?", file="relative/we ird#1%?.png"),
    )
    text, page = page_of(folder)
    sources = [attrs["src"] for attrs in page.all("img") if attrs.get("loading") == "lazy"]
    assert sources == ["abc.png", "we%20ird%231%25%3F.png"]
    links = [attrs["href"] for attrs in page.all("a", **{"class": "full"})]
    assert links == sources
    assert str(tmp_path) not in text  # nothing tied to where the folder is now
    assert "/somewhere" not in text


def test_counts_facts_and_order(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        record(2, "a fox", seconds=75.0, resolution="2k"),
        failed(1, "a mouse", "content policy violation"),
        record(0, "a cat", size=None, model="nano-banana-pro"),
        unconfirmed(3, "a boat"),
    )
    gallery = read_gallery(folder)
    assert gallery.counts() == counts(images=2, failed=1, unconfirmed=1)
    assert [entry.prompt for entry in gallery.images] == ["a cat", "a fox"]  # input order
    _, page = page_of(folder)
    body = " ".join(page.body().split())
    assert "2 images · 1 failed · 1 unconfirmed" in body
    assert "model nano-banana-pro size default" in body
    assert "size 16:9, 2k task task0002 time 1m15s" in body
    assert "content policy violation (TaskFailedError)" in body
    assert "the create was in flight when the run stopped (UnconfirmedCreateError)" in body
    assert "time 2.5s input line 1" in body


def test_reruns_show_each_image_once_and_each_input_as_it_ended(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        record(0, "a cat"),
        failed(1, "a dog", "first try failed"),
        failed(2, "a fox", "failed once"),
        # A resumed run: the journal's image again, the dog retried, the fox failed again.
        record(0, "a cat", from_journal=True, seconds=None),
        record(1, "a dog", task_id="retried"),
        failed(2, "a fox", "failed twice"),
    )
    gallery = read_gallery(folder)
    assert [(e.prompt, e.task_id) for e in gallery.images] == [
        ("a cat", "task0000"),
        ("a dog", "retried"),
    ]
    assert gallery.images[0].from_journal
    assert [(e.prompt, e.error) for e in gallery.failed] == [("a fox", "failed twice")]


def test_an_image_not_in_the_folder_is_listed_not_shown(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, record(0, "a cat"), record(1, "a dog"))
    (folder / "task0001.png").unlink()
    gallery = read_gallery(folder)
    assert [e.prompt for e in gallery.images] == ["a cat"]
    assert [e.prompt for e in gallery.missing] == ["a dog"]
    _, page = page_of(folder)
    assert [a["src"] for a in page.all("img") if a.get("src")] == ["task0000.png"]
    assert "1 image · 1 not in this folder" in page.body()


def test_damaged_lines_are_named_counted_and_skipped(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        record(0, "a cat"),
        '{"index": 1, "prompt": "cut sh',  # a run killed mid-write
        b'{"prompt": "\xff\xfe"}',
        "[1, 2]",
        json.dumps(record(2, "a fox", ok="yes")),
        json.dumps({**record(3, "a fox"), "prompt": ["a", "list"]}),
        json.dumps(record(4, "a fox", line=True)),
        '{"index": 5, "ok": true, "seconds": NaN}',
        "",
        "   ",
        record(6, "a dog"),
    )
    gallery = read_gallery(folder)
    assert [(d.line, d.reason) for d in gallery.damaged] == [
        (2, "not valid JSON (cut short?)"),
        (3, "not UTF-8 text"),
        (4, "not a JSON object"),
        (5, '"ok" is not true or false'),
        (6, '"prompt" is not text'),
        (7, '"line" is not a whole number'),
        (8, '"seconds" is not a duration'),
    ]
    assert [e.prompt for e in gallery.images] == ["a cat", "a dog"]
    _, page = page_of(folder)
    body = page.body()
    assert "7 damaged manifest lines skipped" in body
    assert "line 3: not UTF-8 text" in body


def test_an_older_manifest_without_the_newer_keys(tmp_path: Path) -> None:
    old = ("model", "size", "resolution", "seconds", "error_type")
    line = {k: v for k, v in record(0, "a cat").items() if k not in old}
    bad = {k: v for k, v in failed(1, "a dog", "refused").items() if k not in old}
    by_hand = {"prompt": "a fox", "file": "fox.png", "ok": True}  # no index, no task id
    gallery = read_gallery(folder_with(tmp_path, line, bad, by_hand))
    assert [e.prompt for e in gallery.images] == ["a cat", "a fox"]
    assert gallery.images[1].where == "-"
    assert [e.error for e in gallery.failed] == ["refused"]
    assert gallery.images[0].seconds is None


def test_lone_surrogates_and_control_characters_cannot_break_the_page(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        '{"index": 0, "prompt": "a \\ud800 cat\\u001b[2J", "task_id": "t", '
        '"file": "t.png", "ok": true}',
        images=["t.png"],
    )
    assert main(["gallery", str(folder)]) == 0
    text = (folder / GALLERY).read_text(encoding="utf-8")
    assert "a \\ud800 cat\\x1b[2J" in text


def test_gallery_command_output_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_with(tmp_path, record(0, "a cat"), failed(1, "a dog", "no"), "{oops")
    code, out, err = run_main(capsys, "gallery", str(folder))
    assert code == 0
    assert out == (
        f"gallery: {folder / GALLERY} (images: 1, failed: 1, damaged: 1); open it in a browser\n"
    )
    assert err == (
        f"warning: {folder / MANIFEST} line 3 is damaged (not valid JSON (cut short?)): skipped\n"
    )
    code, out, _ = run_main(capsys, "gallery", str(folder), "--json")
    assert json.loads(out) == {
        "gallery": str(folder / GALLERY),
        **counts(images=1, failed=1, damaged=1),
        "runs": 1,
        "run_images": 1,
    }
    code, out, _ = run_main(capsys, "gallery", str(folder), "--quiet")
    assert out == f"{folder / GALLERY}\n"
    page = (folder / GALLERY).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not list(folder.glob(".banana-gallery-*"))  # the page was written in one step


def test_gallery_of_a_folder_without_a_manifest_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "gallery", str(tmp_path))
    assert code == 2
    assert out == ""
    assert err == (
        f"error: {tmp_path} has no manifest.jsonl: it is written by `banana-async batch` "
        "and `banana-async demo` in their --out folder\n"
    )
    code, _, err = run_main(capsys, "gallery", str(tmp_path / "nowhere"))
    assert code == 2
    assert "no such folder" in err
    assert not (tmp_path / GALLERY).exists()


def test_many_damaged_lines_are_summed_up_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_with(tmp_path, *(["not json"] * 8))
    code, _, err = run_main(capsys, "gallery", str(folder))
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 6
    assert lines[-1] == f"warning: 3 more damaged line(s) skipped, listed on {folder / GALLERY}"
    assert "No image in this folder yet." in (folder / GALLERY).read_text()


def test_batch_gallery_writes_the_page_and_the_summary_names_it(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n<b>a dog</b>\n")
    out = tmp_path / "out"
    code, _, err = run_main(
        capsys, "batch", str(prompts), "--out", str(out), "--gallery", "--size", "3:2", *FAST
    )
    assert code == 0, err
    page = out / GALLERY
    assert f"gallery: {page}; open it in a browser: {page.resolve().as_uri()}" in err
    records = manifest_of(out)
    assert {r["prompt"]: r["size"] for r in records} == {"a cat": "3:2", "<b>a dog</b>": "3:2"}
    assert {r["model"] for r in records} == {"nano-banana-2"}
    assert all(r["seconds"] > 0 and r["error_type"] is None for r in records)
    parsed = Page(page.read_text())
    assert len(parsed.all("figure")) == 2
    assert "&lt;b&gt;a dog&lt;/b&gt;" in page.read_text()


def test_batch_without_gallery_writes_no_page(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    code, _, err = run_main(capsys, "batch", str(prompts), "--out", str(tmp_path), *FAST)
    assert code == 0, err
    assert "gallery:" not in err
    assert not (tmp_path / GALLERY).exists()


def test_demo_writes_the_manifest_and_the_gallery(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo, "DEMO_DURATIONS", (0.01, 0.05))
    out = tmp_path / "demo"
    code, text, err = run_main(capsys, "demo", "--count", "3", "--out", str(out), *FAST)
    assert code == 0, err
    page = out / GALLERY
    assert text.splitlines()[-1] == (
        f"gallery: {page}; open it in a browser: {page.resolve().as_uri()}"
    )
    gallery = read_gallery(out)
    assert gallery.counts() == counts(images=2, failed=1)
    assert [e.size for e in gallery.images] == ["4:3", "16:9"]
    assert all(e.seconds is not None and e.seconds > 0 for e in gallery.images)
    task_id = gallery.failed[0].task_id
    assert gallery.failed[0].error == f"task {task_id} failed: content policy violation"
    # --json keeps stdout to JSON lines: the outcome, then the page's object.
    page.unlink()
    code, text, err = run_main(capsys, "--json", "demo", "--count", "1", "--out", str(out))
    assert code == 0, err
    *outcomes, last = json_lines(text)
    assert len(outcomes) == 1
    assert last == {
        "gallery": str(page),
        **counts(images=3, failed=1),
        "runs": 2,
        "run_images": 1,
    }
    assert page.is_file()
    assert re.search(r"Images \(3\)", page.read_text())  # the second run's image too


def test_a_rerun_into_the_folder_says_the_page_shows_every_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo, "DEMO_DURATIONS", (0.01, 0.05))
    out = tmp_path / "demo"
    argv = ["demo", "--count", "3", "--out", str(out), *FAST]
    assert run_main(capsys, *argv)[0] == 0
    code, text, err = run_main(capsys, *argv)
    assert code == 0, err
    *_, summary, line = text.splitlines()
    # The summary counts this run; the page line says it shows more, and why.
    assert summary.startswith(f"demo finished as designed: 2 images saved in {out}/")
    page = out / GALLERY
    assert line == (
        f"gallery: {page} (every run into this folder: 4 images, 2 from this run); "
        f"open it in a browser: {page.resolve().as_uri()}"
    )
    records = manifest_of(out)
    runs = list(dict.fromkeys(r["run"] for r in records))
    assert len(runs) == 2
    assert [r["run"] for r in records] == [runs[0]] * 3 + [runs[1]] * 3
    gallery = read_gallery(out)
    assert (gallery.runs, gallery.run, gallery.run_images) == (2, runs[1], 2)
    _, parsed = page_of(out)
    body = " ".join(parsed.body().split())
    assert "All 2 runs into this folder are shown" in body
    assert "4 images in all, 2 of them from the latest run, started 20" in body
    assert body.count("(the latest)") == 2  # on the cards of this run's images
    code, text, _ = run_main(capsys, "gallery", str(out))
    assert text == (
        f"gallery: {page} (images: 4, failed: 1; 2 runs, 2 of the images from the latest); "
        "open it in a browser\n"
    )


def test_one_run_says_nothing_of_runs(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, record(0, "a cat", run="2026-11-25T07:40:12.5+00:00"))
    text, _ = page_of(folder)
    assert 'id="runs"' not in text
    assert "(the latest)" not in text
    assert read_gallery(folder).runs == 1


def test_runs_without_a_mark_count_as_one_and_odd_marks_show_as_they_are(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        record(0, "a cat"),  # an older version's line: no run
        record(1, "a dog", run="2026-11-25T07:40:12.5+00:00"),
        record(2, "a fox", run="<b>by hand</b>"),
    )
    gallery = read_gallery(folder)
    assert (gallery.runs, gallery.run, gallery.run_images) == (3, "<b>by hand</b>", 1)
    _, page = page_of(folder)
    body = " ".join(page.body().split())
    assert "All 3 runs into this folder are shown" in body
    assert "started <b>by hand</b>." in body
    assert "run 2026-11-25 07:40:12 UTC input" not in body  # the facts end with the run
    assert "input line 2 run 2026-11-25 07:40:12 UTC" in body
    assert "input line 3 run <b>by hand</b> (the latest)" in body
    assert not page.all("b")


def test_the_page_is_private_whatever_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_with(tmp_path, record(0, "a cat"))
    previous = os.umask(0)
    try:
        assert run_main(capsys, "gallery", str(folder))[0] == 0
        (folder / GALLERY).chmod(0o666)  # a page made by an older version
        assert run_main(capsys, "gallery", str(folder))[0] == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((folder / GALLERY).stat().st_mode) == 0o600


def test_gallery_of_a_file_says_it_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_with(tmp_path, record(0, "a cat"))
    code, out, err = run_main(capsys, "gallery", str(folder / MANIFEST))
    assert code == 2
    assert out == ""
    assert err == (
        f"error: {folder / MANIFEST} is a file, not a folder "
        "(give the --out folder of a batch or demo)\n"
    )


def test_images_in_subfolders_are_found_and_quoted(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        # As a run started beside the folder writes it, relative to the folder,
        # absolute, and from a run started in a sibling folder.
        record(0, "a cat", task_id="a", file="out/cats/a.png"),
        record(1, "a dog", task_id="b", file="dogs/b.png"),
        record(2, "a fox", task_id="c", file=str(tmp_path / "out" / "my foxes" / "c #1.png")),
        record(3, "a cow", task_id="d", file="../out/d.png"),
        images=["cats/a.png", "dogs/b.png", "my foxes/c #1.png"],
    )
    gallery = read_gallery(folder)
    assert [e.file for e in gallery.images] == ["cats/a.png", "dogs/b.png", "my foxes/c #1.png"]
    assert gallery.counts() == counts(images=3, missing=1)
    _, page = page_of(folder)
    sources = [a["src"] for a in page.all("img") if a.get("loading") == "lazy"]
    assert sources == ["cats/a.png", "dogs/b.png", "my%20foxes/c%20%231.png"]


def test_a_tampered_manifest_cannot_make_the_page_show_other_files(tmp_path: Path) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    (tmp_path / "beside.png").write_bytes(PNG)
    folder = folder_with(
        tmp_path,
        record(0, "a cat"),
        record(1, "svg", task_id="s", file="out/evil.svg"),
        record(2, "html", task_id="h", file="page.html"),
        record(3, "no type", task_id="n", file="README"),
        record(4, "a link out", task_id="l", file="out/link.png"),
        record(5, "a folder link out", task_id="f", file="inside/secret.png"),
        record(6, "dot dot", task_id="u", file="../beside.png"),
        record(7, "absolute", task_id="x", file=str(outside / "secret.png")),
        images=["task0000.png", "evil.svg", "page.html", "README", "inside.png"],
    )
    (folder / "link.png").symlink_to(outside / "secret.png")
    (folder / "inside").symlink_to(outside, target_is_directory=True)
    (folder / "ok.png").symlink_to(folder / "inside.png")  # a link inside: fine
    with (folder / MANIFEST).open("a") as manifest:
        manifest.write(json.dumps(record(8, "a link in", task_id="k", file="ok.png")) + "\n")

    gallery = read_gallery(folder)
    assert [e.file for e in gallery.images] == ["task0000.png", "ok.png"]
    assert [(e.prompt, e.refused) for e in gallery.refused] == [
        ("svg", "a file that is not an image (evil.svg)"),
        ("html", "a file that is not an image (page.html)"),
        ("no type", "a file that is not an image (README)"),
        ("a link out", "a link to a file outside the folder (link.png)"),
        ("a folder link out", "a link to a file outside the folder (secret.png)"),
    ]
    # Looked for inside the folder only, never followed out of it.
    assert [e.prompt for e in gallery.missing] == ["dot dot", "absolute"]
    assert gallery.counts() == counts(images=2, missing=2, refused=5)

    _, page = page_of(folder)
    named = {
        value for _, attrs in page.tags for key, value in attrs.items() if key in ("src", "href")
    }
    assert named == {"task0000.png", "ok.png"}
    assert "secret" not in " ".join(value or "" for value in named)
    body = " ".join(page.body().split())
    assert "Files refused (5)" in body
    assert "the manifest names a file that is not an image (evil.svg)" in body
    assert "2 images · 2 not in this folder · 0 failed · 0 unconfirmed · 5 refused" in body


def test_batch_gallery_quiet_and_json_still_say_where_the_page_is(
    capsys: pytest.CaptureFixture[str], env: ServerThread, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "out"
    page = out / GALLERY
    argv = ["batch", str(prompts), "--out", str(out), "--gallery", *FAST]
    code, text, err = run_main(capsys, "--quiet", *argv)
    assert code == 0, err
    assert text == ""  # --quiet: stdout keeps to the failures
    assert err == f"gallery: {page}; open it in a browser: {page.resolve().as_uri()}\n"

    code, text, err = run_main(capsys, "--json", *argv)
    assert code == 0, err
    *outcomes, last = json_lines(text)
    assert sorted(r["index"] for r in outcomes) == [0, 1]
    assert last == {"gallery": str(page), **counts(images=4), "runs": 2, "run_images": 2}
    assert err == ""

    # Without --gallery, --json prints the outcomes only, as before.
    code, text, err = run_main(capsys, "--json", *argv[:-3], *FAST)
    assert code == 0, err
    records = json_lines(text)
    assert [sorted(r) for r in records] == [sorted(outcomes[0])] * 2
