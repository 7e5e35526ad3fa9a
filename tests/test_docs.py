"""Every Python example in docs/ runs here, against the built-in authorization server.

How a page's examples are found and run (the conventions are Sybil's, so moving to Sybil later
changes nothing in the pages):

- Every fenced block whose language is ``python`` (or ``py``) is run, in page order, in one
  namespace per page, so a later block can use what an earlier one defined. Top-level ``await``
  is allowed (as in ``python -m asyncio``); all blocks of a page share one event loop.
- ``<!-- skip: next "reason" -->`` on the line before a block leaves that block out. The reason
  is required; use it only for code that cannot run here (a real provider, a Redis Cluster).
- ``<!-- invisible-code-block: python`` ... ``-->`` is code that runs but is not shown: checks
  that keep an example honest, clean-up, and set-up that changes nothing a reader would see
  (what the environment of tests/test_docs_paste.py provides). How-to pages start what they
  need (the test server) visibly, since tests/test_docs_paste.py pastes only what is shown.
- A block titled ``test_*.py`` (``python title="test_x.py"``) is a test module: besides running
  in the page, it is written to a folder of its own and run with pytest, as the page says.
- Pages run in an empty temporary directory, with ``HOME`` pointing into it, so examples may
  write files and use ``~``. ``docs_test`` in the namespace offers ``defer(callback)`` (run at the
  end, even when a block fails) and ``tmp_path``.
- A page's ``__name__`` is ``"docs_example"``, so a script's ``if __name__ == "__main__":`` part
  (reading ``sys.argv``, say) does not run; call the functions it defines from a later block.
- ``pytest.skip()`` in a block skips the page (e.g. ``pytest.importorskip`` for a module that has
  not landed yet).

The state diagram is not hand-drawn: ``docs/hooks/state_diagram.py`` draws it from
``deviceflow._machine.TRANSITIONS`` at build time; the last tests here check that the drawing
and the table it makes cover every transition.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest

from deviceflow import FlowState
from deviceflow._machine import TRANSITIONS, Signal

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_SKIP = re.compile(r'^\s*<!--\s*skip:\s*next\s+"(?P<reason>[^"]+)"\s*-->\s*$')
_INVISIBLE = re.compile(r"^\s*<!--\s*invisible-code-block:\s*python\s*$")
_TITLE = re.compile(r'\btitle="([^"]+)"')


@attrs.frozen
class Block:
    """One piece of Python in a page: where it starts (1-based line), its source, and whether
    it is skipped (with the reason) or invisible."""

    path: Path
    line: int
    source: str
    skip: str | None = None
    invisible: bool = False
    title: str | None = None


def blocks(path: Path) -> list[Block]:
    """The Python blocks of a Markdown page, visible and invisible, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if match := _SKIP.match(line):
            skip = match["reason"]
            i += 1
            continue
        if _INVISIBLE.match(line):
            start = i + 1
            i += 1
            body: list[str] = []
            while i < len(lines) and lines[i].strip() != "-->":
                body.append(lines[i])
                i += 1
            found.append(Block(path, start + 1, "\n".join(body), invisible=True))
            i += 1
            continue
        if match := _FENCE.match(line):
            indent, fence = match["indent"], match["fence"]
            words = match["info"].strip().lstrip("{").split()
            language = words[0].lstrip(".").lower() if words else ""
            start = i + 1
            i += 1
            body = []
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
                i += 1
            if language in ("python", "py"):
                title = _TITLE.search(match["info"])
                source = "\n".join(body)
                found.append(
                    Block(path, start + 1, source, skip, title=title[1] if title else None)
                )
            elif skip is not None:
                raise AssertionError(f"{path}:{start}: a skip marker before a {language} block")
            skip = None
            i += 1
            continue
        if line.strip() and skip is not None:
            raise AssertionError(f"{path}:{i + 1}: a skip marker must be right before a block")
        i += 1
    return found


def pages() -> list[Path]:
    """Every page with at least one Python block."""
    return [page for page in sorted(DOCS.rglob("*.md")) if blocks(page)]


@attrs.define
class DocsTest:
    """What a page's examples get as ``docs_test``."""

    tmp_path: Path
    _deferred: list[Callable[[], Any]] = attrs.Factory(list)

    def defer(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` (sync, or returning an awaitable) after the page, even on failure."""
        self._deferred.append(callback)


@contextlib.contextmanager
def page_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private event loop for one page, closed cleanly afterwards."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def run_block(block: Block, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    """Run one block in ``namespace``; line numbers in tracebacks are the page's."""
    source = "\n" * (block.line - 1) + block.source
    filename = str(block.path)  # absolute: tracebacks show the page's lines
    code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # our own documentation's examples
    if code.co_flags & inspect.CO_COROUTINE:
        loop.run_until_complete(result)


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's Python blocks run in order without an error (skipped ones give a reason)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    helper = DocsTest(tmp_path)
    namespace: dict[str, Any] = {"__name__": "docs_example", "docs_test": helper}
    with page_loop() as loop:
        try:
            for block in blocks(page):
                if block.skip is None:
                    run_block(block, namespace, loop)
        finally:
            for callback in reversed(helper._deferred):
                outcome = callback()
                if inspect.isawaitable(outcome):
                    loop.run_until_complete(outcome)


def pytest_files() -> list[Block]:
    """The blocks titled ``test_*.py``: test modules a page shows, to be run by pytest."""
    return [
        block
        for page in pages()
        for block in blocks(page)
        if block.title is not None and re.fullmatch(r"test_\w+\.py", block.title)
    ]


@pytest.mark.parametrize("block", pytest_files(), ids=lambda b: f"{b.path.name}:{b.title}")
def test_pytest_examples_pass(block: Block, tmp_path: Path) -> None:
    """A test module shown on a page passes under pytest, with the plugin the package installs
    and pytest-asyncio in auto mode, as the page says to run it."""
    assert block.title is not None
    (tmp_path / block.title).write_text(block.source + "\n", encoding="utf-8")
    names = _test_names(tmp_path / block.title)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp_path)}
    # As the page runs it (`pytest -o asyncio_mode=auto FILE`), in a folder of its own.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    result = subprocess.run(
        [*command, "-o", "asyncio_mode=auto", block.title],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    assert f"{len(names)} passed" in result.stdout


async def test_migration_script_runs_from_the_command_line(tmp_path: Path) -> None:
    """The migration page's dvls_api.py, its parts put together as the page shows them, signs in
    once, calls the API, and on its second run uses the stored token instead of a new code."""
    from deviceflow.stores import generate_key
    from deviceflow.testing import AuthorizationServer

    parts = [
        block.source
        for block in blocks(DOCS / "howto" / "migrate-powershell.md")
        if block.title is not None and block.title.startswith("dvls_api.py")
    ]
    assert 2 == len(parts)
    (tmp_path / "dvls_api.py").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "HOME": str(tmp_path),
        "DEVICEFLOW_KEY": generate_key(),
    }
    async with AuthorizationServer(issuer_path="/dvls", interval=1, auto_approve_after=0) as dvls:
        for _ in range(2):
            process = await asyncio.create_subprocess_exec(
                *[sys.executable, "dvls_api.py", dvls.issuer, "my-client-id", "/api/me"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 120)
            assert 0 == process.returncode, err.decode()
            assert "'client_id': 'my-client-id'" in out.decode()
        assert 1 == dvls.stats.device_authorizations
    assert list((tmp_path / ".local" / "share" / "dvls-api").iterdir())


def _install_texts() -> dict[str, str]:
    files = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in files}


def test_install_instructions_work_before_publication() -> None:
    """No page tells readers to install deviceflow from PyPI, where it is not published yet;
    a wheel they are told to install is named for the current version."""
    from deviceflow import __version__

    from_pypi = re.compile(r"pip\s+install\s+(?:-\S+\s+)*['\"]?deviceflow\b")
    assert [] == [name for name, text in _install_texts().items() if from_pypi.search(text)]
    wheels = {
        wheel
        for text in _install_texts().values()
        for wheel in re.findall(r"deviceflow-[\w.]+-py3-none-any\.whl", text)
    }
    assert wheels
    assert {f"deviceflow-{__version__}-py3-none-any.whl"} == wheels


def test_skip_markers_give_reasons() -> None:
    """Every skipped block says why, and at least most of the examples do run."""
    every = [block for page in pages() for block in blocks(page)]
    skipped = [block for block in every if block.skip is not None]
    assert all(block.skip and block.skip.strip() for block in skipped)
    assert len(skipped) * 3 < len(every)


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "state_diagram_hook", DOCS / "hooks" / "state_diagram.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table() -> set[tuple[str, str, str]]:
    return {
        (source.name, event.name, target.name)
        for source, row in TRANSITIONS.items()
        for event, target in row.items()
    }


def test_state_diagram_draws_every_transition() -> None:
    """The generated SVG has one arrow per (from, to) pair, carrying exactly the table's events."""
    svg = _hook().render_svg()
    drawn = set()
    for match in re.finditer(
        r'data-source="(\w+)" data-target="(\w+)" data-events="([\w|]+)"', svg
    ):
        source, target, events = match.groups()
        drawn |= {(source, event, target) for event in events.split("|")}
    assert _table() == drawn
    states = set(re.findall(r'data-state="(\w+)"', svg))
    assert {state.name for state in FlowState} == states


def test_transition_table_lists_every_row() -> None:
    """The generated Markdown table has one row per (state, event) of the machine."""
    text = _hook().transition_table()
    rows = set(re.findall(r"^\| `(\w+)` \| ([^|]+) \| `(\w+)` \|$", text, re.MULTILINE))
    by_value = {event.value: event.name for event in Signal}
    assert _table() == {(s, by_value[e.strip()], t) for s, e, t in rows}


def test_state_machine_page_uses_the_generated_diagram() -> None:
    """The explanation page asks the hook for the diagram and the table (nothing hand-drawn)."""
    text = (DOCS / "explanation" / "state-machine.md").read_text(encoding="utf-8")
    hook = _hook()
    assert hook.DIAGRAM_MARKER in text
    assert hook.TABLE_MARKER in text


@functools.cache
def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    }


def test_conformance_page_names_only_existing_tests() -> None:
    """Every test id in docs/conformance.md is a test function in that file."""
    text = (DOCS / "conformance.md").read_text(encoding="utf-8")
    ids = set(re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", text))
    assert len(ids) > 40
    missing = {
        f"{file}::{name}"
        for file, name in ids
        if not (ROOT / file).exists() or name not in _test_names(ROOT / file)
    }
    assert set() == missing


def test_security_page_names_only_existing_tests() -> None:
    """Every test id in docs/security.md is a test function in that file."""
    text = (DOCS / "security.md").read_text(encoding="utf-8")
    ids = set(re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", text))
    assert len(ids) > 60
    missing = {
        f"{file}::{name}"
        for file, name in ids
        if not (ROOT / file).exists() or name not in _test_names(ROOT / file)
    }
    assert set() == missing
