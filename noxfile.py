"""The one entry point for checks: ``nox -s tests lint typecheck docs``."""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def install(session: nox.Session, *groups: str, extras: str = "cli,redis,httpx") -> None:
    """Install the project with ``extras`` and the named dependency groups."""
    requirements: list[str] = []
    for group in groups:
        requirements += nox.project.dependency_groups(PYPROJECT, group)
    session.install(f".[{extras}]", *requirements)


@nox.session
def tests(session: nox.Session) -> None:
    """The default test suite, with branch coverage."""
    install(session, "tests")
    session.run("coverage", "erase")
    # Two workers for two cores; a file's tests stay together (they share servers).
    args = session.posargs or ["-q", "-n", "2", "--dist", "loadfile"]
    session.run("coverage", "run", "-m", "pytest", *args)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    paths = ["src", "tests", "benchmarks", "docs/hooks", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library and its tests."""
    install(session, "typing")
    session.run("mypy", "src", "docs/hooks")
    # Each test folder has its own conftest.py: one mypy run per folder keeps module names unique.
    session.run("mypy", *sorted(glob.glob("tests/*.py")))
    for folder in sorted(glob.glob("tests/*/")):
        if not os.path.basename(folder.rstrip("/")).startswith(("_", ".")):
            session.run("mypy", folder)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with warnings as errors."""
    install(session, "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): ratios against baselines and peers, measured in one run."""
    install(session, "bench")
    for script in session.posargs or sorted(os.listdir("benchmarks")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", os.path.join("benchmarks", script))


@nox.session
def fuzz(session: nox.Session) -> None:
    """Fuzzing (not in the default run): 10,000 examples per endpoint, zero untyped exceptions."""
    install(session, "tests")
    session.run(
        "pytest",
        "-q",
        "--hypothesis-show-statistics",
        "tests/fuzz",
        *session.posargs,
        env={"DEVICEFLOW_FUZZ": "1"},
    )


@nox.session
def soak(session: nox.Session) -> None:
    """Soak (not a test): 1,000 accounts through expiry and refresh, with faults, for 10 min.

    ``nox -s soak -- --duration 60`` for a short run; see benchmarks/soak.py for the options.
    """
    install(session)
    session.run("python", "benchmarks/soak.py", *session.posargs)
