"""A griffe extension: deviceflow's reST-flavoured docstrings, rendered as Markdown.

The code's docstrings follow the house style (reST inline markup, as h11 and attrs write
them): ``:class:`~deviceflow.Token```, ``text::`` before a literal block, and ``>>>`` examples.
mkdocstrings renders docstrings as Markdown, where those come out as stray colons and nested
block quotes. This extension rewrites each docstring once the package is loaded:

- ``:class:`X```, ``:meth:``, ``:func:``, ``:attr:``, ``:exc:``, ``:mod:``, ``:data:`` and
  ``:obj:`` become cross-references (``[X][full.path]``) when griffe can resolve the name,
  and code spans otherwise (never a broken link); a leading ``~`` shows the last part only;
- a paragraph ending in ``::`` ends in ``:`` and the indented block after it becomes a
  fenced ``python`` block;
- a run of ``>>>`` lines (with their output) becomes a fenced ``pycon`` block.

The code is not changed: this is only how the site shows it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|exc|mod|data|obj):`(~?)([^`]+)`")


#: The public modules whose exports the reference pages render.
PUBLIC_MODULES = (
    "deviceflow",
    "deviceflow.exceptions",
    "deviceflow.stores",
    "deviceflow.testing",
    "deviceflow.aiohttp",
)


def _rendered(pkg: griffe.Module) -> set[str]:
    """Canonical paths of every object the reference pages show (exports and their members)."""
    paths: set[str] = set()
    for name in PUBLIC_MODULES:
        try:
            module = pkg if name == pkg.path else pkg.get_member(name.split(".", 1)[1])
        except (KeyError, IndexError):
            continue
        for export in module.exports or ():
            member = module.members.get(str(export))
            if member is None:
                continue
            paths.add(member.target_path if isinstance(member, griffe.Alias) else member.path)
    return paths


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The canonical path of ``name`` as seen from ``obj``'s scope, or None."""
    if name.startswith("deviceflow."):
        return name
    scope: griffe.Object | None = obj
    while scope is not None:
        if name.split(".")[0] in scope.members:
            head, _, rest = name.partition(".")
            member = scope.members[head]
            base = member.target_path if isinstance(member, griffe.Alias) else member.path
            return f"{base}.{rest}" if rest else base
        try:
            return scope.resolve(name)
        except (griffe.NameResolutionError, AttributeError, ValueError):
            pass
        scope = scope.parent
    return None


def _is_rendered(path: str, rendered: set[str]) -> bool:
    """True when ``path`` is shown on a reference page (itself, or a public member of one)."""
    if path in rendered:
        return True
    owner, _, member = path.rpartition(".")
    return owner in rendered and not member.startswith("_")


def _roles(obj: griffe.Object, text: str, rendered: set[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, tilde, target = match.groups()
        target = target.strip()
        shown = target.rsplit(".", 1)[-1] if tilde else target
        if kind in ("meth", "func"):
            shown += "()"
        path = _resolve(obj, target)
        if path is None or not _is_rendered(path, rendered):
            return f"`{shown}`"
        return f"[`{shown}`][{path}]"

    return _ROLE.sub(replace, text)


def _blocks(text: str) -> str:
    """Turn ``::`` literal blocks and ``>>>`` runs into fenced code blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block: list[str] = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :])
                i += 1
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            head = line.rstrip()[:-2].rstrip()
            if head.strip():
                out.append(head + ":")
            i += 1
            # Blank lines, then the indented literal block.
            while i < len(lines) and not lines[i].strip():
                i += 1
            base = len(line) - len(line.lstrip())
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
            ):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            code = textwrap.dedent("\n".join(block))
            pad = " " * base
            out += ["", f"{pad}```python", *(pad + c if c else c for c in code.splitlines())]
            out += [f"{pad}```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            yield from _walk(member)


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        rendered = _rendered(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _blocks(_roles(obj, obj.docstring.value, rendered))
