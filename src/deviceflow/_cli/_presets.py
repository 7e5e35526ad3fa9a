"""``--provider NAME``: the Provider presets and the options each one takes.

The table only names each preset's arguments; the constructor itself is looked up on
``Provider`` when it is used (``getattr(Provider, name)``), so the CLI follows the presets the
library has, and says so clearly when one is missing.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import attrs

from deviceflow._provider import Provider

from ._errors import CliError

__all__ = ["PRESETS", "PRESET_OPTIONS", "Preset", "build_provider", "preset_named"]


@attrs.frozen(kw_only=True)
class Preset:
    """A ``Provider`` constructor's name and the CLI options that become its arguments."""

    name: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    #: The client id when none is given (AWS: the client registers itself under this name).
    default_client_id: str | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """Every option this preset takes (option names, as on the command line)."""
        return self.required + self.optional


#: name -> preset; option names equal the constructor's parameters with "_" spelled "-".
PRESETS: Mapping[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(name="devolutions", required=("base-url",)),
        Preset(name="entra", optional=("tenant", "authority")),
        Preset(name="google", optional=("base-url",)),
        Preset(name="github", optional=("base-url",)),
        Preset(name="auth0", required=("domain",), optional=("audience",)),
        Preset(name="okta", required=("issuer",)),
        Preset(name="keycloak", required=("base-url", "realm")),
        Preset(
            name="aws_sso",
            required=("region", "start-url"),
            optional=("base-url",),
            default_client_id="deviceflow-cli",
        ),
    )
}

#: Options that only mean something to a preset (``issuer`` also names a server by itself).
PRESET_OPTIONS: tuple[str, ...] = (
    "tenant",
    "authority",
    "domain",
    "audience",
    "base-url",
    "realm",
    "region",
    "start-url",
)


def preset_named(name: str) -> Preset:
    """The preset called ``name`` (``aws-sso`` and ``AWS_SSO`` are accepted too)."""
    preset = PRESETS.get(name.strip().lower().replace("-", "_"))
    if preset is None:
        raise CliError(
            f"unknown provider {name!r}",
            hint=f"use one of {', '.join(PRESETS)}, or --issuer URL for any OpenID provider",
        )
    return preset


async def build_provider(preset: Preset, arguments: Mapping[str, str]) -> Provider:
    """Call ``Provider.<preset>(**arguments)``; CliError when it is missing or refuses them.

    ``arguments`` maps option names (``base-url``) to values; options not given are left out so
    the constructor's own defaults apply. A preset that is a coroutine function is awaited.
    """
    missing = [name for name in preset.required if not arguments.get(name)]
    if missing:
        flags = " and ".join(f"--{name}" for name in missing)
        raise CliError(
            f"--provider {preset.name} needs {flags}",
            hint="give it on the command line, in the environment or in the profile",
        )
    constructor = getattr(Provider, preset.name, None)
    if constructor is None or not callable(constructor):
        raise CliError(
            f"this version of deviceflow has no {preset.name!r} provider preset "
            f"(Provider.{preset.name} is missing)",
            hint="use --issuer URL with the provider's issuer, or upgrade deviceflow",
        )
    kwargs = {name.replace("-", "_"): value for name, value in arguments.items() if value}
    try:
        inspect.signature(constructor).bind(**kwargs)
    except TypeError as exc:
        raise CliError(
            f"Provider.{preset.name}() does not take these options: {exc}",
            hint="this version of deviceflow's preset differs from what the CLI expects",
        ) from None
    try:
        provider = constructor(**kwargs)
        if inspect.isawaitable(provider):
            provider = await provider
    except ValueError as exc:
        raise CliError(f"--provider {preset.name}: {exc}") from None
    if not isinstance(provider, Provider):
        raise CliError(f"Provider.{preset.name}() did not return a Provider")
    return provider
