"""The shell side of the how-to pages: their ``console`` commands and config files, so that
tests run them as a reader would (with the example hosts replaced by test servers)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

from cli_harness import COMMAND, Cli

from helpers import time_factor

DOCS = Path(__file__).resolve().parents[2] / "docs"

_FENCE = re.compile(r"^```(\w*)\s*$")


def fenced(page: Path, language: str) -> list[str]:
    """The bodies of the page's fenced blocks in ``language``, in order."""
    found: list[str] = []
    body: list[str] | None = None
    current = ""
    for line in page.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line)
        if body is None and match:
            body, current = [], match[1]
        elif body is not None and line.startswith("```"):
            if current == language:
                found.append("\n".join(body) + "\n")
            body = None
        elif body is not None:
            body.append(line)
    return found


def commands(page: Path) -> list[str]:
    """The commands of the page's ``console`` blocks (the lines that start with ``$ ``)."""
    return [
        line[2:]
        for block in fenced(page, "console")
        for line in block.splitlines()
        if line.startswith("$ ")
    ]


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with every example value replaced; each must occur (the page may not drift)."""
    for example, value in replacements.items():
        assert example in text, f"{example!r} is no longer in the page"
        text = text.replace(example, value)
    return text


def shim(cli: Cli) -> str:
    """A folder holding a ``deviceflow`` command that runs the one under test; the PATH to
    use with it first."""
    folder = cli.home / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / "deviceflow"
    script.write_text(f'#!/bin/sh\nexec {shlex.join(COMMAND)} "$@"\n', encoding="utf-8")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def run_shell(
    cli: Cli, command: str, env: Mapping[str, str | None]
) -> subprocess.CompletedProcess[str]:
    """Run one of the page's commands with bash, in the CLI's private environment."""
    return subprocess.run(
        ["/bin/bash", "-c", command],
        env=cli.environment(env),
        cwd=cli.home,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60 * time_factor(),
        check=False,
    )


__all__ = ["DOCS", "commands", "fenced", "run_shell", "shim", "substitute"]
