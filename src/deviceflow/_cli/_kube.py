"""kubectl's exec credential plugin: ``deviceflow token --format exec-credential``.

kubectl runs the command named in the kubeconfig's ``users[].user.exec`` and reads an
``ExecCredential`` (``client.authentication.k8s.io/v1``) from its stdout. It says in the
``KUBERNETES_EXEC_INFO`` environment variable whether a person can be asked
(``spec.interactive``); when not, a missing token is an error and no code is shown. The
credential carries the token's expiry, so kubectl runs the plugin again once it has passed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import timezone
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from deviceflow._models import Token

from ._errors import EXIT_OK, EXIT_USAGE, CliError
from ._fast import require_bearer
from ._settings import Settings

if TYPE_CHECKING:
    from ._terminal import Console  # imports asyncio: not on the fast path of `token`

__all__ = ["API_VERSIONS", "ExecInfo", "exec_credential", "read_exec_info", "run"]

#: The ExecCredential versions understood; the answer uses the one kubectl asked with.
API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_INFO = "KUBERNETES_EXEC_INFO"


@attrs.frozen(kw_only=True)
class ExecInfo:
    """What kubectl tells the plugin: the API version it expects, and whether a person can
    be asked."""

    api_version: str = API_VERSIONS[0]
    interactive: bool = False


def read_exec_info(env: Mapping[str, str], stdin: TextIO) -> ExecInfo:
    """``KUBERNETES_EXEC_INFO`` as an ExecInfo. Without it (run by hand), a person can be asked
    when stdin is a terminal, as kubectl's ``IfAvailable`` decides."""
    text = env.get(EXEC_INFO, "").strip()
    if not text:
        return ExecInfo(interactive=_isatty(stdin))
    try:
        document = json.loads(text)
    except ValueError:
        raise CliError(f"{EXEC_INFO} is not JSON", code=EXIT_USAGE) from None
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise CliError(f"{EXEC_INFO} is not an ExecCredential", code=EXIT_USAGE)
    version = document.get("apiVersion")
    if version not in API_VERSIONS:
        raise CliError(
            f"{EXEC_INFO} asks for apiVersion {version!r}; this version of deviceflow "
            f"answers {' or '.join(API_VERSIONS)}",
            code=EXIT_USAGE,
            hint="set apiVersion: client.authentication.k8s.io/v1 in the kubeconfig's exec block",
        )
    spec = document.get("spec")
    interactive = spec.get("interactive") if isinstance(spec, dict) else None
    return ExecInfo(api_version=version, interactive=interactive is True)


def exec_credential(
    token: Token, api_version: str = API_VERSIONS[0], *, account: str = "default"
) -> dict[str, Any]:
    """The ExecCredential kubectl reads: the token, and its expiry in RFC 3339 UTC. kubectl
    sends it as a bearer token, so a DPoP-bound one is refused (CliError)."""
    require_bearer(token, account=account, use="given to kubectl")
    status: dict[str, Any] = {"token": token.access_token}
    if token.expires_at is not None:
        expiry = token.expires_at.astimezone(timezone.utc)
        status["expirationTimestamp"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": api_version, "kind": "ExecCredential", "status": status}


async def run(settings: Settings, console: Console, stdin: TextIO | None = None) -> int:
    """``deviceflow token --format exec-credential``."""
    from ._plugin import plugin_token  # the client: not needed by the fast path of `token`

    info = read_exec_info(settings.env, sys.stdin if stdin is None else stdin)
    token = await plugin_token(
        settings,
        console,
        interactive=info.interactive,
        why_not="kubectl runs the plugin without a terminal (spec.interactive is false)",
    )
    account = settings.value("account") or "default"
    credential = exec_credential(token, info.api_version, account=account)
    print(json.dumps(credential), file=console.out, flush=True)
    return EXIT_OK


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
