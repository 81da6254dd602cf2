"""Nox sessions for banana_async: tests, lint, typing and docs (bench on request).

Run every default session with ``python3 -m nox``; pick one with ``-s``,
for example ``python3 -m nox -s tests-3.12`` or ``python3 -m nox -s lint``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

# ``--download-python`` (set below) first appeared in nox 2025.10.14.
nox.needs_version = ">=2025.10.14"

# Prefer uv to build the session environments; fall back to virtualenv, which
# nox always brings along, when uv is not installed.
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = False
# A developer who lacks one of the Pythons gets that session skipped. In CI
# (the CI variable is set) a missing interpreter is an error instead, so a
# green run really covered every version in PYTHONS.
nox.options.error_on_missing_interpreters = "CI" in os.environ
# The machines this project runs on reach package registries only; never try
# to download a standalone Python build, just use the interpreters on PATH.
nox.options.download_python = "never"
nox.options.sessions = ["tests", "lint", "typing", "docs"]

PYTHONS = ["3.11", "3.12", "3.13"]
MAIN_PYTHON = "3.11"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest options come from pyproject.toml)."""
    # The bench extra too: tests/test_bench_plots.py draws the charts with
    # matplotlib (skipped without it locally, an error under CI).
    session.install(".[test,bench]")
    session.run("pytest", *session.posargs)


@nox.session(python=MAIN_PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff, and the layering with import-linter."""
    session.install(".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The package itself is installed (.[lint]), so lint-imports finds it.
    session.run("lint-imports")


@nox.session(python=MAIN_PYTHON, name="typing")
def type_check(session: nox.Session) -> None:
    """Type-check the package, its tests and the helper scripts strictly."""
    # nox itself is installed so that mypy can check this file's imports, and
    # the bench extra (httpx, matplotlib) for the benchmarks' imports.
    session.install(".[typing,bench]", "nox")
    targets = ["banana_async", "tests", "noxfile.py"]
    targets += [name for name in ("benchmarks", "examples") if (ROOT / name).is_dir()]
    session.run("mypy", "--strict", *targets)


@nox.session(python=MAIN_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Measure banana_async against plain aiohttp/httpx loops and chart it (not run by default).

    ``python3 -m nox -s bench`` for the full run (several minutes), or
    ``python3 -m nox -s bench -- --quick`` for a smoke run; see benchmarks/README.md.
    """
    session.install(".[test,bench]")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python=MAIN_PYTHON, default=False)
def faults(session: nox.Session) -> None:
    """Storms of 5,000 inputs per fault profile with the SQLite journal (not run by default).

    Prints the table of counts per profile and fails if any promise broke;
    ``python3 -m nox -s faults -- --inputs 20000`` for more (see tests/_storm.py).
    """
    session.install(".[test]")
    session.run("python", "-m", "tests._storm", *session.posargs)


@nox.session(python=MAIN_PYTHON, default=False)
def crash(session: nox.Session) -> None:
    """Crash loops at full size: 20 SIGKILLs per journal, then the counts (not run by default).

    The regular suite runs the same tests with 5 rounds over 100 inputs; set
    ``BANANA_CRASH_SEED`` to draw other kill moments. Needs Postgres for the
    shared journal (skipped without it, except in CI).
    """
    session.install(".[test]")
    env = {"BANANA_CRASH_ROUNDS": "20", "BANANA_CRASH_INPUTS": "1000"}
    session.run(
        "pytest", "-p", "no:randomly", "-s", "tests/test_crash_loops.py", *session.posargs, env=env
    )


@nox.session(python=MAIN_PYTHON, default=False, name="pg-restarts")
def pg_restarts(session: nox.Session) -> None:
    """Postgres restarts under many records in flight, over 30 seeds (not run by default).

    The regular suite runs one seed; set ``BANANA_PG_RESTART_SEEDS`` (a
    comma-separated list) to replay others. Needs Postgres.
    """
    session.install(".[test]")
    seeds = ",".join(str(seed) for seed in range(1, 31))
    session.run(
        "pytest",
        "-p",
        "no:randomly",
        "tests/test_journal_postgres.py",
        "-k",
        "restarts_during_many_records",
        *session.posargs,
        env={"BANANA_PG_RESTART_SEEDS": seeds},
    )


@nox.session(python=MAIN_PYTHON, default=False)
def signals(session: nox.Session) -> None:
    """SIGTERM and SIGINT, twice, at each moment of a paced batch, 30 rounds (not by default).

    A command that does not stop fails its test after 60 s; see
    tests/test_cli_signals.py. ``BANANA_SIGNAL_ROUNDS`` sets the rounds.
    """
    session.install(".[test]")
    env = {"BANANA_SIGNAL_ROUNDS": os.environ.get("BANANA_SIGNAL_ROUNDS", "30")}
    session.run(
        "pytest",
        "-p",
        "no:randomly",
        "tests/test_cli_signals.py",
        "-k",
        "paced",
        *session.posargs,
        env=env,
    )


@nox.session(python=MAIN_PYTHON, default=False)
def fuzz(session: nox.Session) -> None:
    """Fuzz for longer: the tests/test_fuzz_*.py files, Hypothesis profile "long".

    Not run by default (several minutes). Each run tries new random inputs,
    and keeps the failing ones in .hypothesis/ to try first next time; see
    docs/contributing.md ("Fuzzing"). Extra pytest options go after ``--``.
    """
    session.install(".[test]")
    files = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("tests/test_fuzz_*.py"))
    session.run(
        "pytest",
        "--hypothesis-show-statistics",
        *files,
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": "long"},
    )


@nox.session(python=MAIN_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML docs, treating every warning as an error."""
    session.install(".[docs]")
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-n",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


# What mutmut's exit codes mean for a mutant (mutmut.stats.status_by_exit_code).
_KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout"}
_KILLED |= {255: "timeout", 37: "caught by type check"}


@nox.session(python=MAIN_PYTHON, default=False)
def mutants(session: nox.Session) -> None:
    """Mutation-test the modules that hold the promises; print the score per module.

    The modules and options are ``[tool.mutmut]`` in pyproject.toml. All of
    them take hours on 2 cores (the journal and the batch engine most of
    that); results are kept in ``mutants/`` (a second run only tests what
    changed). ``nox -s mutants -- results`` lists the survivors, ``nox -s
    mutants -- show NAME`` shows one, and ``nox -s mutants -- run
    --max-children 1 'banana_async.dialects.*'`` runs one module's mutants
    on one core, then prints the table.
    """
    session.install(".[test]", "mutmut==3.8.1")
    if session.posargs:
        session.run("mutmut", *session.posargs)
        if session.posargs[0] == "run":  # a run of some modules: their scores too
            session.log("\n" + mutation_scores(ROOT / "mutants"))
        return
    session.run("mutmut", "run", "--max-children", str(os.cpu_count() or 2))
    session.log("\n" + mutation_scores(ROOT / "mutants"))


def mutation_scores(folder: Path) -> str:
    """A table of the mutants killed per module, from mutmut's ``.meta`` files."""
    import json  # noqa: PLC0415 (only this session needs it)

    rows = ["| module | mutants | killed | survived | no test reached it | not run | score |"]
    rows.append("|---|---:|---:|---:|---:|---:|---:|")
    for meta in sorted(folder.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        total = len(codes)
        killed = sum(1 for code in codes if code in _KILLED)
        untested = sum(1 for code in codes if code in (5, 33))
        unrun = sum(1 for code in codes if code is None)  # stopped before it was tested
        survived = total - killed - untested - unrun
        module = meta.relative_to(folder).as_posix().removesuffix(".meta")
        run = total - unrun
        score = f"{100 * killed / run:.1f} %" if run else "-"
        rows.append(
            f"| {module} | {total} | {killed} | {survived} | {untested} | {unrun} | {score} |"
        )
    return "\n".join(rows)
