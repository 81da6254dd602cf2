"""Sphinx configuration for the banana_async documentation."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent

# Document the installed package (the nox "docs" session installs it). Only
# when it is not installed, e.g. a bare `sphinx-build` in a checkout, fall back
# to importing it straight from the repository.
if importlib.util.find_spec("banana_async") is None:
    sys.path.insert(0, str(REPO_ROOT))


def _read_version() -> str:
    """Read ``__version__`` from the source file without importing the package."""
    text = (REPO_ROOT / "banana_async" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if match is None:
        msg = "could not find __version__ in banana_async/_version.py"
        raise RuntimeError(msg)
    return match.group(1)


# -- Project information -----------------------------------------------------

project = "banana_async"
author = "banana_async developers"
copyright = "banana_async developers"
release = _read_version()
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

# sphinx.ext.intersphinx is deliberately NOT enabled: the machines that build
# these docs (developers' and CI's) reach package registries only, so the
# object inventories of Python, aiohttp, attrs and friends cannot be fetched,
# and with -W the failed downloads would break the build.

root_doc = "index"
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Every unresolved cross-reference is an error (`sphinx-build -n -W`).
nitpicky = True
# Without intersphinx, references into other projects' APIs cannot resolve.
# Ignore those, and only those: anything in banana_async must still resolve.
_EXTERNAL_MODULES = (
    # third-party dependencies
    "aiohttp",
    "attr",
    "attrs",
    "cattrs",
    "backoff",
    "yarl",
    "multidict",
    # the optional web frameworks of banana_async.fastapi
    "fastapi",
    "starlette",
    # the standard library (builtins such as str and int are already exempt)
    "argparse",
    "asyncio",
    "sqlite3",
    "collections",
    "contextlib",
    "datetime",
    "enum",
    "logging",
    "os",
    "pathlib",
    "random",
    "re",
    "time",
    "types",
    "typing",
    "typing_extensions",
)
# autodoc sometimes renders pathlib.Path by its bare imported name.
nitpick_ignore = [
    ("py:class", "Path"),
    # The type variable of banana_async.fastapi.lifespan's overloads (an application type).
    ("py:class", "banana_async.fastapi._App"),
]

nitpick_ignore_regex = [
    (r"py:.*", rf"(?:{'|'.join(re.escape(name) for name in _EXTERNAL_MODULES)})(?:\..+)?"),
]

# -- autodoc / napoleon ------------------------------------------------------

autodoc_typehints = "description"
autodoc_member_order = "bysource"

napoleon_google_docstring = True
napoleon_numpy_docstring = False

# -- MyST --------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- HTML output -------------------------------------------------------------

html_theme = "furo"
html_title = f"banana_async {release}"
