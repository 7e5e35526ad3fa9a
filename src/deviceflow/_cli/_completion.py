"""``deviceflow completion bash|zsh|fish``: shell completion scripts made from the parser.

The scripts list the commands and each command's options as the parser has them, so they
follow the options as they change; ``--provider`` completes the preset names and
``completion`` the shells.
"""

from __future__ import annotations

import argparse

from ._presets import PRESETS

__all__ = ["script"]

_SHELLS = ("bash", "zsh", "fish")


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, list[argparse.Action]]]:
    """Each command's help line and its options (``--help`` included, ``--debug`` hidden)."""
    found: dict[str, tuple[str, list[argparse.Action]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                options = [a for a in sub._actions if a.option_strings]
                found[name] = (helps.get(name, ""), options)
    return found


def _long(action: argparse.Action) -> list[str]:
    return [s for s in action.option_strings if s.startswith("--")]


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _help(action: argparse.Action) -> str:
    text = action.help if action.help and action.help != argparse.SUPPRESS else ""
    return text.split(" [env ")[0]


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell``."""
    if shell == "bash":
        return _bash(parser)
    if shell == "zsh":
        return _zsh(parser)
    if shell == "fish":
        return _fish(parser)
    raise ValueError(f"no completion for {shell!r}; choose one of {', '.join(_SHELLS)}")


def _bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    cases = []
    for name, (_, options) in commands.items():
        flags = " ".join(flag for action in options for flag in _long(action))
        cases.append(f'        {name}) opts="{flags}" ;;')
    return (
        "# bash completion for deviceflow: source <(deviceflow completion bash)\n"
        "_deviceflow() {\n"
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" opts\n'
        '    if [ "$COMP_CWORD" -eq 1 ]; then\n'
        f'        COMPREPLY=($(compgen -W "{" ".join(commands)} --help --version --debug" '
        '-- "$cur"))\n'
        "        return\n"
        "    fi\n"
        '    case "$prev" in\n'
        f'        --provider) COMPREPLY=($(compgen -W "{" ".join(PRESETS)}" -- "$cur")); '
        "return ;;\n"
        '        --store|--key-file|--profile-file|--output|-o) COMPREPLY=($(compgen -f -- "$cur"))'
        "; return ;;\n"
        "    esac\n"
        '    case "${COMP_WORDS[1]}" in\n' + "\n".join(cases) + "\n"
        '        *) opts="" ;;\n'
        "    esac\n"
        '    if [ "${COMP_WORDS[1]}" = completion ] && [ "$COMP_CWORD" -eq 2 ]; then\n'
        f'        opts="$opts {" ".join(_SHELLS)}"\n'
        "    fi\n"
        '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))\n'
        "}\n"
        "complete -o default -F _deviceflow deviceflow\n"
    )


def _zsh_text(text: str) -> str:
    """``text`` inside a single-quoted _arguments spec: no quotes, brackets or colons."""
    for char in "'[]:":
        text = text.replace(char, " " if char != "'" else "")
    return " ".join(text.split())


def _zsh(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    described = "\n".join(
        f"    '{name}:{_zsh_text(summary)}'" for name, (summary, _) in commands.items()
    )
    cases = []
    for name, (_, options) in commands.items():
        specs = []
        for action in options:
            for flag in _long(action):
                value = ""
                if _takes_value(action):
                    kind = str(action.metavar or "value").lower()
                    if flag == "--provider":
                        value = f":provider:({' '.join(PRESETS)})"
                    elif flag in ("--store", "--key-file", "--profile-file", "--output"):
                        value = f":{_zsh_text(kind)}:_files"
                    else:
                        value = f":{_zsh_text(kind)}: "
                specs.append(f"'{flag}[{_zsh_text(_help(action))}]{value}'")
        if name == "completion":
            specs.append(f"'1:shell:({' '.join(_SHELLS)})'")
        cases.append(f"        {name}) _arguments {' '.join(specs)} ;;")
    return (
        "#compdef deviceflow\n"
        "# zsh completion for deviceflow: deviceflow completion zsh > ~/.zfunc/_deviceflow\n"
        "_deviceflow() {\n"
        "  local -a commands\n"
        "  commands=(\n"
        f"{described}\n"
        "  )\n"
        "  if (( CURRENT == 2 )); then\n"
        "    _describe 'command' commands\n"
        "    return\n"
        "  fi\n"
        "  local cmd=$words[2]\n"
        "  shift words; (( CURRENT-- ))\n"
        "  case $cmd in\n" + "\n".join(cases) + "\n"
        "  esac\n"
        "}\n"
        '_deviceflow "$@"\n'
    )


def _fish_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    names = " ".join(commands)
    lines = [
        "# fish completion for deviceflow:",
        "#   deviceflow completion fish > ~/.config/fish/completions/deviceflow.fish",
        "complete -c deviceflow -f",
        f"complete -c deviceflow -n 'not __fish_seen_subcommand_from {names}' -l version",
        f"complete -c deviceflow -n 'not __fish_seen_subcommand_from {names}' -l debug",
    ]
    for name, (summary, options) in commands.items():
        lines.append(
            f"complete -c deviceflow -n 'not __fish_seen_subcommand_from {names}' -a {name} "
            f"-d {_fish_text(summary)}"
        )
        when = f"-n '__fish_seen_subcommand_from {name}'"
        for action in options:
            for flag in _long(action):
                parts = [f"complete -c deviceflow {when} -l {flag[2:]}"]
                if _takes_value(action):
                    parts.append("-r")
                    if flag == "--provider":
                        parts.append(f"-a '{' '.join(PRESETS)}'")
                    elif flag in ("--store", "--key-file", "--profile-file", "--output"):
                        parts.append("-F")
                parts.append(f"-d {_fish_text(_help(action))}")
                lines.append(" ".join(parts))
    lines.append(
        "complete -c deviceflow -n '__fish_seen_subcommand_from completion' "
        f"-a '{' '.join(_SHELLS)}'"
    )
    return "\n".join(lines) + "\n"
