"""Every option of the CLI, and where its value comes from.

An option's value is taken from the first of these that has it:

1. the command line (``--client-id dvls``);
2. its environment variable (``DEVICEFLOW_CLIENT_ID=dvls``; an empty value counts as unset);
3. the selected profile of the TOML profile file (``client-id = "dvls"`` under ``[work]``);
4. the built-in default.

The profile is ``--profile NAME`` (or ``DEVICEFLOW_PROFILE``); without one, a ``[default]``
table is used when the file has one. Secrets that are not OAuth client settings (the store key)
never come from the command line or a profile: ``DEVICEFLOW_KEY`` or a key file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from ._errors import EXIT_CONFIG, CliError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "OPTIONS",
    "Option",
    "Settings",
    "add_options",
    "default_config_dir",
    "default_data_dir",
    "load_profiles",
    "load_settings",
]

_APP = "deviceflow"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@attrs.frozen(kw_only=True)
class Option:
    """One option: its flag, environment variable, and the commands that take it."""

    name: str  # the long flag without dashes; also the profile key
    help: str
    commands: frozenset[str]
    kind: Literal["str", "flag", "list"] = "str"  # a list: words in a string, or a TOML array
    metavar: str | None = None
    env: bool = True  # read DEVICEFLOW_<NAME>
    profile: bool = True  # may be set in a profile
    flag_too: bool = True  # also a command-line flag

    @property
    def flag(self) -> str:
        """The command-line flag: ``--client-id``."""
        return f"--{self.name}"

    @property
    def dest(self) -> str:
        """The attribute name: ``client_id``."""
        return self.name.replace("-", "_")

    @property
    def env_var(self) -> str | None:
        """The environment variable: ``DEVICEFLOW_CLIENT_ID``, or None."""
        return f"DEVICEFLOW_{self.dest.upper()}" if self.env else None


_FLOW = frozenset({"login", "token", "logout", "credential"})
_STORE = frozenset({"login", "token", "status", "logout", "reset", "credential"})


def _opt(name: str, text: str, commands: frozenset[str], **kw: Any) -> Option:
    return Option(name=name, help=text, commands=commands, **kw)


#: Every option of the store- and provider-using commands, in the order --help shows them.
OPTIONS: tuple[Option, ...] = (
    _opt("issuer", "the authorization server's issuer URL (discovered)", _FLOW, metavar="URL"),
    _opt(
        "provider",
        "a provider preset: devolutions, entra, google, github, auth0, okta, keycloak, aws_sso",
        _FLOW,
        metavar="NAME",
    ),
    _opt("client-id", "the OAuth client id registered with the provider", _FLOW, metavar="ID"),
    _opt(
        "client-secret",
        "the client secret, for providers that need one (prefer the environment variable)",
        _FLOW,
        metavar="SECRET",
    ),
    _opt(
        "scope",
        "scopes to ask for, space separated (default: the preset's; for --issuer, openid, "
        "and offline_access when the server offers it)",
        frozenset({"login"}),
        metavar="SCOPE",
    ),
    _opt("account", "the name the token is stored under (default: default)", _FLOW, metavar="NAME"),
    _opt("tenant", "Entra ID: tenant id or domain (default: organizations)", _FLOW, metavar="ID"),
    _opt("authority", "Entra ID: the cloud's login host (national clouds)", _FLOW, metavar="URL"),
    _opt("domain", "Auth0: the tenant's domain", _FLOW, metavar="DOMAIN"),
    _opt("audience", "Auth0: the API audience", _FLOW, metavar="AUDIENCE"),
    _opt(
        "base-url",
        "Devolutions Server or Keycloak URL; GitHub Enterprise Server URL",
        _FLOW,
        metavar="URL",
    ),
    _opt("realm", "Keycloak: the realm", _FLOW, metavar="REALM"),
    _opt("region", "AWS IAM Identity Center: the AWS region", _FLOW, metavar="REGION"),
    _opt("start-url", "AWS IAM Identity Center: the start URL", _FLOW, metavar="URL"),
    _opt(
        "store",
        "token store: a folder, or a redis:// URL (default: the user data folder)",
        _STORE,
        metavar="PATH|URL",
    ),
    _opt(
        "key-file",
        "file holding the store key (default: DEVICEFLOW_KEY, else a key file in the user "
        "config folder, created on first use)",
        _STORE,
        metavar="PATH",
    ),
    _opt("profile", "use this table of the profile file", _STORE, metavar="NAME", profile=False),
    _opt(
        "profile-file",
        "the TOML profile file (default: profiles.toml in the user config folder)",
        _STORE,
        metavar="PATH",
        profile=False,
    ),
    _opt("no-qr", "do not show a QR code", frozenset({"login"}), kind="flag"),
    _opt("no-browser", "never open a browser", frozenset({"login"}), kind="flag"),
    _opt(
        "hosts",
        "credential: the hosts (host[:port][/path]) whose git credentials this profile gives",
        frozenset({"credential"}),
        kind="list",
        env=False,
        flag_too=False,
    ),
    _opt(
        "username",
        "credential: the user name given to git with the token (default: oauth2)",
        frozenset({"credential"}),
        metavar="NAME",
    ),
    _opt(
        "yes",
        "do not ask: replace a valid sign-in (login), delete the store (reset)",
        frozenset({"login", "reset"}),
        kind="flag",
        env=False,
        profile=False,
    ),
    _opt(
        "json",
        "print JSON for scripts",
        frozenset({"token", "status"}),
        kind="flag",
        env=False,
        profile=False,
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the options ``command`` takes to its parser.

    Defaults are SUPPRESS: the namespace holds only what the command line gave, so the
    environment and the profile can fill in the rest.
    """
    for option in OPTIONS:
        if command not in option.commands or not option.flag_too:
            continue
        text = option.help
        if option.env_var:
            text += f" [env {option.env_var}]"
        if option.kind == "flag":
            parser.add_argument(
                option.flag,
                dest=option.dest,
                action="store_true",
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                metavar=option.metavar,
                default=argparse.SUPPRESS,
                help=text,
            )


def default_config_dir() -> Path:
    """The user's config folder for deviceflow (profiles.toml, the store key)."""
    import platformdirs

    return Path(platformdirs.user_config_dir(_APP, appauthor=False))


def default_data_dir() -> Path:
    """The user's data folder for deviceflow (the default token store lives below it)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(_APP, appauthor=False))


@attrs.frozen(kw_only=True)
class Profile:
    """One table of the profile file."""

    name: str
    path: Path
    values: Mapping[str, str | bool]


@attrs.frozen(kw_only=True)
class Settings:
    """The options of one command, resolved from the command line, environment and profile."""

    command: str
    cli: Mapping[str, Any]
    env: Mapping[str, str]
    profile: Profile | None

    def value(self, name: str) -> str | None:
        """The option's value (a string), or None when nothing sets it."""
        option = _BY_NAME[name]
        found = self._lookup(option)
        if found is None:
            return None
        value, _ = found
        if not isinstance(value, str):
            raise CliError(f"{self.origin(name)} must be a string", code=EXIT_CONFIG)
        return value

    def flag(self, name: str) -> bool:
        """The flag's value: False unless something turns it on."""
        option = _BY_NAME[name]
        found = self._lookup(option)
        if found is None:
            return False
        value, origin = found
        if isinstance(value, bool):
            return value
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
        raise CliError(
            f"{origin} must be true or false (1/0, yes/no, on/off), not {value!r}",
            code=EXIT_CONFIG,
        )

    def origin(self, name: str) -> str:
        """Where the option's value comes from, for messages: ``--issuer``, ``$DEVICEFLOW_...``."""
        found = self._lookup(_BY_NAME[name])
        return found[1] if found else f"--{name}"

    def on_command_line(self, name: str) -> bool:
        """True when the command line itself set the option."""
        return _BY_NAME[name].dest in self.cli

    def _lookup(self, option: Option) -> tuple[str | bool, str] | None:
        if option.dest in self.cli:
            return self.cli[option.dest], option.flag
        if option.env_var and self.env.get(option.env_var):
            return self.env[option.env_var], f"${option.env_var}"
        if self.profile is not None and option.name in self.profile.values:
            where = f"{option.name} in profile [{self.profile.name}] of {self.profile.path}"
            return self.profile.values[option.name], where
        return None


def load_settings(
    command: str, namespace: argparse.Namespace, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve ``command``'s settings from the parsed command line, ``env`` and the profile."""
    env = os.environ if env is None else env
    cli = {
        option.dest: getattr(namespace, option.dest)
        for option in OPTIONS
        if command in option.commands and hasattr(namespace, option.dest)
    }
    bare = Settings(command=command, cli=cli, env=env, profile=None)
    profile = None
    if command in _BY_NAME["profile"].commands:
        profile = _load_profile(bare.value("profile"), bare.value("profile-file"), bare)
    return Settings(command=command, cli=cli, env=env, profile=profile)


def load_profiles(settings: Settings) -> list[Profile]:
    """Every table of the profile file, each checked as ``--profile NAME`` would check it;
    none when the default file does not exist."""
    found = _read_tables(None, settings.value("profile-file"))
    if found is None:
        return []
    path, tables = found
    return [_profile(name, tables[name], path) for name in tables]


def _read_tables(name: str | None, file: str | None) -> tuple[Path, dict[str, Any]] | None:
    explicit_file = file is not None
    path = Path(file).expanduser() if file else default_config_dir() / "profiles.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if name is None and not explicit_file:
            return None
        raise CliError(
            f"the profile file {path} does not exist",
            hint="create it as docs/cli.md describes, or set --profile-file",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the profile file {path}: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"the profile file {path} is not valid TOML: {exc}") from None
    tables = {key: value for key, value in document.items() if isinstance(value, dict)}
    if len(tables) != len(document):
        stray = sorted(set(document) - set(tables))
        raise CliError(
            f"the profile file {path} has values outside a [profile] table: {', '.join(stray)}"
        )
    return path, tables


def _load_profile(name: str | None, file: str | None, bare: Settings) -> Profile | None:
    found = _read_tables(name, file)
    if found is None:
        return None
    path, tables = found
    chosen = name if name is not None else "default"
    if chosen not in tables:
        if name is None:
            return None
        known = ", ".join(sorted(tables)) or "none"
        raise CliError(
            f"no profile [{name}] in {path} (profiles: {known})",
            hint=f"check {bare.origin('profile')}",
        )
    return _profile(chosen, tables[chosen], path)


def _profile(chosen: str, table: dict[str, Any], path: Path) -> Profile:
    values: dict[str, str | bool] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        option = _BY_NAME.get(key)
        if option is None or not option.profile:
            raise CliError(f"unknown setting {raw_key!r} in profile [{chosen}] of {path}")
        if option.kind == "list" and isinstance(value, list):
            if not all(isinstance(item, str) and item.split() == [item] for item in value):
                raise CliError(f"{raw_key} in profile [{chosen}] of {path} must list words")
            value = " ".join(value)
        wanted = bool if option.kind == "flag" else str
        if not isinstance(value, wanted):
            kind = {"flag": "true or false", "list": "a list of words"}.get(option.kind, "a string")
            raise CliError(f"{raw_key} in profile [{chosen}] of {path} must be {kind}")
        values[key] = value
    return Profile(name=chosen, path=path, values=values)
