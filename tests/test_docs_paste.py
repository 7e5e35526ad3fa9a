"""Every how-to page works when its Python blocks are pasted into ``python -m asyncio``, in order.

tests/test_docs.py runs every page's examples in-process, with the page's invisible blocks.
Here only what a reader sees is used: the visible ``python`` blocks of each how-to page
(``docs/howto/`` and ``docs/providers/``) are typed, one after the other, into a real asyncio
REPL (a subprocess reading stdin), with ``HOME`` and the working directory in a temporary
folder. The REPL's rules apply as they would to a person: top-level ``await`` works and
``asyncio.run()`` does not; an indented block ends at a blank line, so a page's blocks keep
blank lines out of indented code and put one after it. Anything the page needs (the built-in
authorization server) it starts itself, visibly.

The test then checks that the REPL wrote nothing to stderr but its banner (no traceback, no
warning, no log line), and that what it printed is what the page shows: every ``text`` block
right after a Python block is that block's output, and together, in order, they are the whole
output (with ``...`` standing for any text, and ports, user codes and clock times free to
differ).

The environment carries what pages say they read from it: ``REDIS_URL`` points at the tests' own
redis-server (never the machine's Redis), and ``METRICS_PORT=0`` lets the Prometheus example
take any free port. A block a reader could not paste here (a real provider, a Redis Cluster) is
skipped with test_docs.py's marker and says why in its first line, a comment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _redis import RedisProcess
from test_docs import DOCS, ROOT, Block, blocks
from test_docs import pages as all_pages

HOWTO = DOCS / "howto"
#: How-to guides: the general ones, and one per provider.
GUIDES = (HOWTO, DOCS / "providers")
_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`]*)$")
_PROMPTS = re.compile(r"^(?:(?:>>>|\.\.\.) )+")
_BANNER = re.compile(
    r"^(asyncio REPL .*|Use \"await\" directly instead of \"asyncio.run\(\)\"\.|"
    r"Type \"help\", .*|>>> import asyncio|exiting asyncio REPL\.\.\.)$"
)
#: What may differ between the page and a run: free ports, user codes, clock times.
_VARYING = [
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\b[B-DF-HJ-NP-TV-Z]{4}-[B-DF-HJ-NP-TV-Z]{4}\b"), "<user code>"),
    (re.compile(r"\b\d\d:\d\d UTC\b"), "<time> UTC"),
]


def howto_pages() -> list[Path]:
    """The how-to pages (general and per provider) that have Python blocks."""
    return [page for page in all_pages() if page.parent in GUIDES]


def visible(page: Path) -> list[Block]:
    """The blocks a reader sees and pastes: no invisible ones, no skipped ones."""
    return [block for block in blocks(page) if block.skip is None and not block.invisible]


def outputs(page: Path) -> list[str]:
    """The lines of every ``text`` block that follows a ``python`` block (blank lines between
    them allowed): the output the page promises, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[str] = []
    previous = ""  # the language of the last block, while only blank lines follow it
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                previous = ""
            i += 1
            continue
        words = match["info"].split()
        language = words[0].lower() if words else ""
        end = i + 1
        while not lines[end].startswith(match["fence"]):
            end += 1
        if language == "text" and previous in ("python", "py"):
            found.extend(line for line in lines[i + 1 : end] if line.strip())
        previous = language
        i = end + 1
    return found


def _normal(line: str) -> str:
    for pattern, replacement in _VARYING:
        line = pattern.sub(replacement, line)
    return line.rstrip()


def _matches(expected: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in _normal(expected).split("..."))
    return re.fullmatch(pattern, _normal(actual)) is not None


def paste(page: Path) -> str:
    """What a person types: each block, then a blank line (which also ends an indented one)."""
    return "".join(block.source.rstrip("\n") + "\n\n" for block in visible(page))


def run_repl(source: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncio"],
        input=source,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=180,
        check=False,
    )


def environment(tmp_path: Path, redis_url: str | None) -> dict[str, str]:
    """A clean environment: HOME in ``tmp_path``, the project's src first on the path."""
    home = tmp_path / "home"
    home.mkdir()
    keep = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "DEVICEFLOW_TIME_FACTOR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(
        HOME=str(home),
        PYTHONPATH=str(ROOT / "src"),
        PYTHONIOENCODING="utf-8",
        METRICS_PORT="0",
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


@pytest.mark.parametrize("page", howto_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_howto_pastes_into_the_asyncio_repl(
    page: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The page's visible blocks, pasted in order, print what the page shows and no error."""
    source = paste(page)
    redis_url = None
    if "REDIS_URL" in source:
        redis: RedisProcess = request.getfixturevalue("redis_server")
        redis_url = redis.url
    result = run_repl(source, tmp_path, environment(tmp_path, redis_url))
    errors = [
        line for line in result.stderr.splitlines() if line.strip() and not _BANNER.match(line)
    ]
    assert [] == errors, result.stderr
    printed = [
        line for line in (_PROMPTS.sub("", raw) for raw in result.stdout.splitlines()) if line
    ]
    expected = outputs(page)
    mismatch = len(expected) != len(printed) or not all(
        _matches(want, got) for want, got in zip(expected, printed, strict=True)
    )
    assert not mismatch, "\n".join(["expected:", *expected, "", "printed:", *printed])


def test_skipped_howto_blocks_say_why_visibly() -> None:
    """A how-to block that is not pasted opens with a comment telling the reader why."""
    unexplained = [
        f"{block.path.name}:{block.line}"
        for page in howto_pages()
        for block in blocks(page)
        if block.skip is not None and not block.source.lstrip().startswith("#")
    ]
    assert [] == unexplained


def test_output_blocks_are_found() -> None:
    """The output a page promises is read from the text blocks after its Python blocks."""
    assert "all 200: True refreshes: 3" in outputs(HOWTO / "multi-tenant.md")
    assert not any("3f9c" in line for line in outputs(HOWTO / "file-store.md"))
