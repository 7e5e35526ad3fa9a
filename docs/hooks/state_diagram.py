"""MkDocs hook: draw the device flow's state diagram from ``deviceflow._machine.TRANSITIONS``.

A page that contains ``<!-- state-diagram -->`` gets, in its place, an inline SVG drawn from the
machine's transition table when the site is built; ``<!-- transition-table -->`` becomes the same
table as Markdown. Nothing is drawn by hand, so the picture cannot drift from the code (h11 does
the same with ``make-state-diagrams.py``). The SVG needs no JavaScript and no network, and takes
its colours from the theme, so it follows the light and dark palettes.

Layout, kept simple on purpose: the states that have rows in the table (the live ones) stand in a
row in FlowState order; the terminal states stand in a second row, each placed near the mean
position of the states that lead to it. Self-transitions are loops above their state. Arrows into
a terminal state are not labelled one by one when every arrow into it carries the same events:
those are written once under the state instead.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from deviceflow import FlowState, ProviderMetadata
from deviceflow._machine import TRANSITIONS, DeviceFlowMachine, Signal

DIAGRAM_MARKER = "<!-- state-diagram -->"
TABLE_MARKER = "<!-- transition-table -->"
CLI_ENV_MARKER = "<!-- cli-environment -->"

NODE_W = 136
NODE_H = 42
MIN_GAP = 80  # least space between two live states
TERMINAL_GAP = 176  # least distance between the centres of two terminal states
LINE = 15  # height of one line of label text
CHAR_W = 6.9  # rough width of one character at the label font size (13px)
MARGIN = 24
LOOP_H = 42


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def initial_states() -> list[tuple[FlowState, str]]:
    """Where a machine starts, read from the machine itself: with an issuer or with endpoints."""
    by_issuer = DeviceFlowMachine(client_id="diagram", issuer="https://issuer.invalid").state
    by_metadata = DeviceFlowMachine(
        client_id="diagram",
        metadata=ProviderMetadata(
            issuer=None,
            device_authorization_endpoint="https://issuer.invalid/device",
            token_endpoint="https://issuer.invalid/token",
        ),
    ).state
    return [(by_issuer, "from an issuer"), (by_metadata, "from known endpoints")]


def edges(
    table: Mapping[FlowState, Mapping[Signal, FlowState]] = TRANSITIONS,
) -> dict[tuple[FlowState, FlowState], list[Signal]]:
    """The table's rows merged by (from, to): the signals of each arrow, in Signal order."""
    merged: dict[tuple[FlowState, FlowState], list[Signal]] = {}
    for source in FlowState:
        for signal in Signal:
            target = table.get(source, {}).get(signal)
            if target is not None:
                merged.setdefault((source, target), []).append(signal)
    return merged


def transition_table(table: Mapping[FlowState, Mapping[Signal, FlowState]] = TRANSITIONS) -> str:
    """The transition table as a Markdown table, one row per (state, signal)."""
    rows = ["| From | On | To |", "| --- | --- | --- |"]
    for source in FlowState:
        for signal in Signal:
            target = table.get(source, {}).get(signal)
            if target is not None:
                rows.append(f"| `{source.name}` | {signal.value} | `{target.name}` |")
    return "\n".join(rows)


def _spread(wanted: list[tuple[float, FlowState]], gap: float) -> dict[FlowState, float]:
    """Place points near their wanted x, at least ``gap`` apart (clusters centre on their mean)."""
    groups: list[list[tuple[float, FlowState]]] = []
    for x, state in sorted(wanted, key=lambda item: item[0]):
        groups.append([(x, state)])
        while len(groups) > 1:
            last, before = groups[-1], groups[-2]
            if _centre(before) + (len(before) + len(last)) * gap / 2 <= _centre(last):
                break
            groups[-2:] = [before + last]
    placed: dict[FlowState, float] = {}
    for group in groups:
        start = _centre(group) - (len(group) - 1) * gap / 2
        for index, (_, state) in enumerate(group):
            placed[state] = start + index * gap
    return placed


def _centre(group: list[tuple[float, FlowState]]) -> float:
    return sum(x for x, _ in group) / len(group)


def _text(x: float, y: float, lines: Iterable[str], cls: str, anchor: str = "middle") -> str:
    parts = []
    for index, line in enumerate(lines):
        parts.append(
            f'<text x="{x:.1f}" y="{y + index * LINE:.1f}" text-anchor="{anchor}" '
            f'class="{cls}">{_esc(line)}</text>'
        )
    return "".join(parts)


def _labels(events: list[Signal]) -> list[str]:
    return [event.value for event in events]


def render_svg(table: Mapping[FlowState, Mapping[Signal, FlowState]] = TRANSITIONS) -> str:
    """The state diagram as one line of inline SVG."""
    arrows = edges(table)
    live = [state for state in FlowState if state in table]
    targets = {target for (_, target) in arrows}
    terminals = [state for state in FlowState if state in targets and state not in table]
    loops = {source: events for (source, target), events in arrows.items() if source is target}
    loop_lines = max((len(events) for events in loops.values()), default=0)

    left = MARGIN + 110 + NODE_W / 2  # room for the start marker
    y_live = MARGIN + loop_lines * LINE + LOOP_H + NODE_H / 2 + 8
    y_term = y_live + 210
    pos: dict[FlowState, tuple[float, float]] = {}
    x = left
    for index, state in enumerate(live):
        if index:
            # Wide enough for the labels of the arrows between this state and the last one.
            before = live[index - 1]
            labels = [
                event.value
                for pair in ((before, state), (state, before))
                for event in arrows.get(pair, [])
            ]
            widest = max((len(label) * CHAR_W for label in labels), default=0.0)
            x += NODE_W + max(MIN_GAP, widest + 24)
        pos[state] = (x, y_live)
    wanted = []
    for state in terminals:
        sources = [pos[s][0] for (s, t) in arrows if t is state and s in pos]
        wanted.append((sum(sources) / len(sources), state))
    for state, x in _spread(wanted, TERMINAL_GAP).items():
        pos[state] = (x, y_term)
    shift = max(0.0, MARGIN + NODE_W / 2 - min(x for x, _ in pos.values()))
    pos = {state: (x + shift, y) for state, (x, y) in pos.items()}

    # Captions under terminal states whose incoming arrows all carry the same events.
    captions: dict[FlowState, list[Signal]] = {}
    for state in terminals:
        incoming = [events for (s, t), events in arrows.items() if t is state and s is not t]
        if all(events == incoming[0] for events in incoming):
            captions[state] = incoming[0]
    caption_lines = max((len(events) for events in captions.values()), default=0)

    width = max(x for x, _ in pos.values()) + NODE_W / 2 + MARGIN + 40
    height = y_term + NODE_H / 2 + 12 + (caption_lines + 1) * LINE + MARGIN
    out: list[str] = []

    def arrow(path: str, source: FlowState, target: FlowState, events: list[Signal]) -> None:
        out.append(
            f'<path d="{path}" class="df-edge" marker-end="url(#df-arrow)" '
            f'data-source="{source.name}" data-target="{target.name}" '
            f'data-events="{_esc("|".join(e.name for e in events))}"/>'
        )

    # Start markers: one dot per way a machine can begin.
    for index, (state, why) in enumerate(initial_states()):
        x, y = pos[state]
        if index == 0:
            sx, sy = x - NODE_W / 2 - 104, y
            out.append(f'<circle cx="{sx:.1f}" cy="{sy:.1f}" r="7" class="df-start"/>')
            out.append(
                f'<path d="M{sx + 7:.1f},{sy:.1f} L{x - NODE_W / 2 - 2:.1f},{y:.1f}" '
                f'class="df-edge df-initial" marker-end="url(#df-arrow)" '
                f'data-initial="{state.name}"/>'
            )
            out.append(_text((sx + x - NODE_W / 2) / 2, sy - 8, [why], "df-label"))
        else:
            sx, sy = x - NODE_W / 2 - 40, y + NODE_H / 2 + 58
            out.append(f'<circle cx="{sx:.1f}" cy="{sy:.1f}" r="7" class="df-start"/>')
            out.append(
                f'<path d="M{sx + 5:.1f},{sy - 5:.1f} L{x - NODE_W / 2 + 8:.1f},'
                f'{y + NODE_H / 2 + 2:.1f}" class="df-edge df-initial" '
                f'marker-end="url(#df-arrow)" data-initial="{state.name}"/>'
            )
            out.append(_text(sx - 12, sy + 4, [why], "df-label", "end"))

    # Arrows between live states, and loops.
    for (source, target), events in arrows.items():
        sx, sy = pos[source]
        tx, ty = pos[target]
        labels = _labels(events)
        if source is target:
            top = sy - NODE_H / 2
            path = (
                f"M{sx - 18:.1f},{top:.1f} C{sx - 42:.1f},{top - LOOP_H:.1f} "
                f"{sx + 42:.1f},{top - LOOP_H:.1f} {sx + 18:.1f},{top - 1:.1f}"
            )
            arrow(path, source, target, events)
            first = top - LOOP_H + 4 - len(labels) * LINE
            out.append(_text(sx, first + LINE - 4, labels, "df-label"))
        elif target in table:
            both_ways = (target, source) in arrows
            forward = tx > sx
            offset = (-8 if forward else 8) if both_ways else 0
            x1 = sx + (NODE_W / 2 if forward else -NODE_W / 2)
            x2 = tx - (NODE_W / 2 if forward else -NODE_W / 2)
            x2 += -2 if forward else 2
            if abs(live.index(target) - live.index(source)) == 1:
                path = f"M{x1:.1f},{sy + offset:.1f} L{x2:.1f},{ty + offset:.1f}"
                label_y = sy + offset - 7 if offset <= 0 else sy + offset + LINE
                if offset <= 0:
                    label_y -= (len(labels) - 1) * LINE
            else:
                lift = 40 + 20 * abs(live.index(target) - live.index(source))
                path = (
                    f"M{sx:.1f},{sy - NODE_H / 2:.1f} C{sx:.1f},{sy - NODE_H / 2 - lift:.1f} "
                    f"{tx:.1f},{ty - NODE_H / 2 - lift:.1f} {tx:.1f},{ty - NODE_H / 2 - 2:.1f}"
                )
                label_y = sy - NODE_H / 2 - lift * 0.75 - (len(labels) - 1) * LINE
            arrow(path, source, target, events)
            out.append(_text((sx + tx) / 2, label_y, labels, "df-label"))

    # Arrows down to terminal states, spread along the bottom and top edges of the boxes.
    downward = [(s, t) for (s, t) in arrows if t in terminals and s is not t]
    for source, target in downward:
        events = arrows[(source, target)]
        outs = sorted((t for (s, t) in downward if s is source), key=lambda t: pos[t][0])
        ins = sorted((s for (s, t) in downward if t is target), key=lambda s: pos[s][0])
        sx, sy = pos[source]
        tx, ty = pos[target]
        x1 = sx + (outs.index(target) - (len(outs) - 1) / 2) * 16
        x2 = tx + (ins.index(source) - (len(ins) - 1) / 2) * 16
        y1, y2 = sy + NODE_H / 2, ty - NODE_H / 2 - 2
        path = (
            f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + 110:.1f} {x2:.1f},{y2 - 110:.1f} {x2:.1f},{y2:.1f}"
        )
        arrow(path, source, target, events)
        if target not in captions:
            middle = (x1 + (x2 - x1) * 0.35, y1 + (y2 - y1) * 0.4)
            out.append(_text(*middle, _labels(events), "df-label"))

    # States last, so they sit on top of the arrows.
    for state, (x, y) in pos.items():
        terminal = state not in table
        cls = "df-state df-terminal" if terminal else "df-state"
        if state is FlowState.GRANTED:
            cls += " df-granted"
        out.append(
            f'<g class="{cls}" data-state="{state.name}"><rect x="{x - NODE_W / 2:.1f}" '
            f'y="{y - NODE_H / 2:.1f}" width="{NODE_W}" height="{NODE_H}" rx="10"/>'
        )
        if terminal:
            out.append(
                f'<rect x="{x - NODE_W / 2 + 4:.1f}" y="{y - NODE_H / 2 + 4:.1f}" '
                f'width="{NODE_W - 8}" height="{NODE_H - 8}" rx="7" class="df-inner"/>'
            )
        out.append(_text(x, y + 5, [state.name], "df-name"))
        out.append("</g>")
        if state in captions:
            lines = ["on " + captions[state][0].value, *_labels(captions[state][1:])]
            out.append(_text(x, y + NODE_H / 2 + 18, lines, "df-label df-caption"))

    style = (
        "<style>"
        ".df-diagram{max-width:100%;height:auto;font-family:var(--md-text-font-family,sans-serif)}"
        ".df-state rect{fill:var(--md-default-bg-color,#fff);"
        "stroke:var(--md-primary-fg-color,#3f51b5);stroke-width:2}"
        ".df-terminal rect{stroke:var(--md-default-fg-color--light,#666)}"
        ".df-terminal .df-inner{stroke-width:1}"
        ".df-granted rect{stroke:#2e7d32}"
        ".df-name{font-size:15px;font-weight:700;fill:var(--md-default-fg-color,#222);"
        "font-family:var(--md-code-font-family,monospace)}"
        ".df-label{font-size:13px;fill:var(--md-default-fg-color--light,#555)}"
        ".df-caption{font-style:italic}"
        ".df-edge{fill:none;stroke:var(--md-default-fg-color--light,#777);stroke-width:1.4}"
        ".df-arrowhead,.df-start{fill:var(--md-default-fg-color--light,#777)}"
        "</style>"
    )
    defs = (
        '<defs><marker id="df-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" class="df-arrowhead"/></marker></defs>'
    )
    title = (
        "<title>State diagram of a device flow, drawn from deviceflow._machine.TRANSITIONS</title>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="df-diagram" role="img" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}">'
        f"{title}{style}{defs}{''.join(out)}</svg>"
    )


def cli_environment() -> str:
    """The CLI's environment variables as a Markdown table, read from its option table."""
    try:
        from deviceflow._cli._settings import OPTIONS
    except ImportError:
        return "The `deviceflow` command's own variables are listed in its reference."
    rows = ["| Variable | Same as | Meaning |", "| --- | --- | --- |"]
    for option in OPTIONS:
        if option.env_var:
            meaning = option.help.replace("|", "\\|")
            rows.append(f"| `{option.env_var}` | `{option.flag}` | {meaning} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the markers with the generated diagram and tables."""
    if CLI_ENV_MARKER in markdown:
        markdown = markdown.replace(CLI_ENV_MARKER, cli_environment())
    if DIAGRAM_MARKER in markdown:
        figure = f'<figure class="df-figure" markdown="0">{render_svg()}</figure>'
        markdown = markdown.replace(DIAGRAM_MARKER, figure)
    if TABLE_MARKER in markdown:
        markdown = markdown.replace(TABLE_MARKER, transition_table())
    return markdown
