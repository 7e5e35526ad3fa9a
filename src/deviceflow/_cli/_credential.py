"""git's credential helper protocol: ``deviceflow credential get|store|erase``.

git writes ``key=value`` lines on the helper's stdin, up to a blank line (or the end), and reads
``key=value`` lines back (git-credential(1)). Set up with
``git config --global credential.helper '!deviceflow credential'``.

- ``get``: the profile whose ``hosts`` match the request's host (and path, when git sends one:
  ``credential.useHttpPath``) gives the server, client and account; the answer is ``username``
  (the profile's ``username``, default ``oauth2``), ``password`` (the access token, refreshed if
  needed) and ``password_expiry_utc``. No profile matches: nothing is printed, so git asks the
  next helper. A token goes over https only (plain http to loopback hosts, for tests).
- ``erase``: git rejected the password. When it is the account's current access token, the
  stored record is replaced by a tombstone (nothing is revoked), so the next ``get`` signs in
  again; a password that is not the current token (another helper's, or one already replaced)
  erases nothing.
- ``store``, and any action git may add later: nothing (the token lives in deviceflow's store).

Where git runs the helper with a terminal (``GIT_TERMINAL_PROMPT`` is not 0), a missing token
starts a device flow whose code goes to stderr; otherwise the helper says on stderr how to sign
in and answers nothing.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import TextIO

import attrs

from deviceflow._models import is_b64token
from deviceflow._records import TOMBSTONE_TTL, RecordCodec, Tombstone
from deviceflow._urls import is_loopback_host
from deviceflow.exceptions import ConflictError, ProtocolError

from ._commands import _needs_index, _opened, resolve_target
from ._errors import EXIT_OK
from ._fast import require_bearer
from ._plugin import plugin_token
from ._settings import Profile, Settings, load_profiles
from ._store import AccountIndex
from ._terminal import Console

__all__ = ["CredentialRequest", "HostPattern", "choose_settings", "read_request", "run"]

_FALSE = frozenset({"0", "false", "no", "off"})


@attrs.frozen(kw_only=True)
class CredentialRequest:
    """What git asks about: protocol, host (with ``:port`` when not the default), path."""

    protocol: str
    host: str
    path: str | None = None
    password: str | None = attrs.field(default=None, repr=False)


def read_request(stdin: TextIO) -> CredentialRequest:
    """The ``key=value`` lines git writes, up to a blank line or the end of input."""
    values: dict[str, str] = {}
    for line in stdin:
        line = line.rstrip("\r\n")
        if not line:
            break
        key, sep, value = line.partition("=")
        if sep and not key.endswith("[]"):  # multi-valued keys (wwwauth[]) are not needed
            values[key] = value
    return CredentialRequest(
        protocol=values.get("protocol", "").lower(),
        host=values.get("host", "").lower(),
        path=values.get("path") or None,
        password=values.get("password"),
    )


@attrs.frozen
class HostPattern:
    """One entry of a profile's ``hosts``: ``host[:port][/path]``.

    The host (and port) must equal the request's; a pattern without a port matches only
    requests on the default port. With a path, the request's path (sent when
    ``credential.useHttpPath`` is true) must be it or lie below it; a ``.git`` suffix is
    ignored on both sides.
    """

    host: str
    path: str | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """``git.example.com``, ``git.example.com:8443/team``."""
        host, _, path = text.strip().lower().partition("/")
        return cls(host, _trim(path) or None)

    def score(self, request: CredentialRequest) -> int | None:
        """How closely the pattern matches (longer paths win); None when it does not."""
        if self.host != request.host:
            return None
        if self.path is None:
            return 0
        asked = _trim(request.path or "")
        if asked == self.path or asked.startswith(self.path + "/"):
            return len(self.path)
        return None


def _hostname(host: str) -> str:
    """``host`` without its ``:port``: ``[::1]:8080`` -> ``[::1]``, ``localhost`` as is."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def _trim(path: str) -> str:
    path = path.strip("/")
    return path.removesuffix(".git")


def _matches(profile: Profile, request: CredentialRequest) -> int | None:
    hosts = profile.values.get("hosts")
    if not isinstance(hosts, str):
        return None
    scores = [HostPattern.parse(p).score(request) for p in hosts.split()]
    found = [score for score in scores if score is not None]
    return max(found) if found else None


def choose_settings(settings: Settings, request: CredentialRequest) -> Settings | None:
    """The settings that answer ``request``, or None when none should (git then asks the next
    helper).

    A server on the command line, or a profile named by ``--profile``/``DEVICEFLOW_PROFILE``,
    answers every host unless that profile lists ``hosts`` that do not match. Otherwise the
    profile whose ``hosts`` match best (the longest path; the first in the file on a tie).
    """
    secure = request.protocol == "https" or (
        request.protocol == "http" and is_loopback_host(_hostname(request.host))
    )
    if not secure or not request.host:
        return None  # never a token in cleartext
    explicit = settings.on_command_line("issuer") or settings.on_command_line("provider")
    if explicit or settings.value("profile") is not None:
        profile = settings.profile
        if profile is not None and "hosts" in profile.values and _matches(profile, request) is None:
            return None
        return settings
    best: tuple[int, Profile] | None = None
    for profile in load_profiles(settings):
        score = _matches(profile, request)
        if score is not None and (best is None or score > best[0]):
            best = (score, profile)
    if best is None:
        return None
    return attrs.evolve(settings, profile=best[1])


async def run(action: str, settings: Settings, console: Console, stdin: TextIO) -> int:
    """``deviceflow credential ACTION``, with git's request on ``stdin``."""
    if action not in ("get", "erase"):
        return EXIT_OK  # store, and actions git may add: nothing to do (git-credential(1))
    request = read_request(stdin)
    chosen = choose_settings(settings, request)
    if chosen is None:
        return EXIT_OK
    if action == "erase":
        await _erase(chosen, console, request)
        return EXIT_OK
    return await _get(chosen, console)


async def _get(settings: Settings, console: Console) -> int:
    prompt = os.environ.get("GIT_TERMINAL_PROMPT", "").strip().lower() not in _FALSE
    token = await plugin_token(
        settings,
        console,
        interactive=prompt,
        why_not="git runs the helper with GIT_TERMINAL_PROMPT=0",
    )
    require_bearer(token, account=settings.value("account") or "default", use="given to git")
    if not is_b64token(token.access_token):  # a line break would forge protocol lines
        raise ProtocolError("the access token is not an RFC 6750 b64token; it is not given to git")
    lines = [
        f"username={settings.value('username') or 'oauth2'}",
        f"password={token.access_token}",
    ]
    if token.expires_at is not None:
        expiry = int(token.expires_at.astimezone(timezone.utc).timestamp())
        lines.append(f"password_expiry_utc={expiry}")
    print("\n".join(lines), file=console.out, flush=True)
    return EXIT_OK


async def _erase(settings: Settings, console: Console, request: CredentialRequest) -> None:
    if not request.password:
        return
    async with _opened(settings, console) as store:
        known = await AccountIndex(store).entries() if _needs_index(settings) else []
        target = await resolve_target(settings, known)
        codec = RecordCodec(target.provider.identity, target.client_id)
        key = target.key
        current = await store.get(key)
        if current is None:
            return
        content = RecordCodec.decode(current.value)
        if isinstance(content, Tombstone) or content.token.access_token != request.password:
            return  # not the token git rejected: another helper's, or replaced since
        tombstone = codec.encode_tombstone(
            target.account, datetime.now(timezone.utc), reason="rejected", seq=content.seq + 1
        )
        try:
            await store.put(key, tombstone, expected_version=current.version, ttl=TOMBSTONE_TTL)
        except ConflictError:
            return  # replaced meanwhile (a refresh): the rejected token is gone already
