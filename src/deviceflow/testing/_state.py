"""The authorization server's state and rules, without HTTP: codes, grants, tokens.

Theory of operation. A device authorization (RFC 8628 3.1) creates a :class:`DeviceAuthorization`
in state ``pending``. The user (the verification page, or a test through the server's controls)
moves it to ``approved`` or ``denied``; time moves it past ``expires_at``. Polling the token
endpoint (RFC 8628 3.4) with an approved code creates a :class:`Grant` holding one access token
and, optionally, one refresh token, and the code becomes ``redeemed``: polling it again is
answered ``invalid_grant`` and revokes the grant, as some servers do to punish a client that
polls after success. Refreshing (RFC 6749 6) with rotation marks the presented refresh token
``used`` and issues a new one; presenting a used one again revokes the whole grant (RFC 9700
4.14.2). Every method takes ``now``, a monotonic time from the server's clock, so this module
reads no clock and does no I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Literal

import attrs

__all__ = [
    "DEVICE_CODE_GRANT",
    "REFRESH_TOKEN_GRANT",
    "AccessToken",
    "AuthorizationState",
    "DeviceAuthorization",
    "Grant",
    "IssuedTokens",
    "OAuthFailure",
    "RefreshToken",
    "ServerStats",
    "enforced_interval",
    "normalize_user_code",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_TOKEN_GRANT = "refresh_token"

#: RFC 8628 3.5: a slow_down adds 5 seconds to the interval for this and all later polls.
SLOW_DOWN_STEP = 5
#: Polls this close to the interval count as on time: float sums of a virtual clock are not
#: exact, and a compliant client waiting exactly ``interval`` must not draw slow_down.
POLL_TOLERANCE = 1e-3

Scope = tuple[str, ...]


class OAuthFailure(Exception):
    """An OAuth error answer (RFC 6749 5.2) on its way to the HTTP layer."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        interval: float | None = None,
        basic_auth_attempted: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.interval = interval  # for slow_down answers that carry the new interval
        self.basic_auth_attempted = basic_auth_attempted
        self.headers = dict(headers or {})  # added to the answer (a DPoP-Nonce)
        self.grant_type: str | None = None  # set for refresh_token answers (profile aliases)


def normalize_user_code(user_code: str) -> str:
    """The canonical form of a user code: upper case, without "-" and white space.

    RFC 8628 6.1: the server should ignore case and punctuation the user may type.
    """
    return "".join(c for c in user_code.upper() if c != "-" and not c.isspace())


@attrs.define(kw_only=True)
class ServerStats:
    """Counters of what the server did, for assertions in tests.

    - ``device_authorizations``: device codes issued.
    - ``polls``: device_code grant token requests answered by the grant logic (requests answered
      by an injected fault are in ``server.requests`` and ``server.polls()`` but not counted here).
    - ``tokens_issued``: access tokens issued, by either grant.
    - ``refreshes``: successful refresh_token grants.
    - ``invalid_grants``: ``invalid_grant`` answers.
    - ``grants_revoked``: grants revoked by reuse detection, a re-polled device code, the
      revocation endpoint (for a refresh token) or ``revoke_all()``.
    - ``slow_downs``: ``slow_down`` answers.
    - ``dpop_proofs_refused``: DPoP proofs refused (``invalid_dpop_proof``), at the token
      endpoint or the protected resource.
    - ``dpop_nonces_asked``: ``use_dpop_nonce`` answers (RFC 9449 8, 9).
    """

    device_authorizations: int = 0
    polls: int = 0
    tokens_issued: int = 0
    refreshes: int = 0
    invalid_grants: int = 0
    grants_revoked: int = 0
    slow_downs: int = 0
    dpop_proofs_refused: int = 0
    dpop_nonces_asked: int = 0


@attrs.define(kw_only=True, eq=False)
class Grant:
    """What one approval of one device code authorizes: a family of tokens revoked together."""

    client_id: str
    scope: Scope | None
    subject: str
    jkt: str | None = None  # RFC 9449: the key its refresh tokens are bound to (DPoP)
    revoked: bool = False
    access_tokens: list[AccessToken] = attrs.Factory(list)
    refresh_tokens: list[RefreshToken] = attrs.Factory(list)


@attrs.define(kw_only=True, eq=False)
class AccessToken:
    """An issued access token."""

    value: str = attrs.field(repr=False)
    grant: Grant = attrs.field(repr=False)
    scope: Scope | None
    expires_at: float | None
    jkt: str | None = None  # RFC 9449 6: cnf.jkt of a DPoP-bound token
    revoked: bool = False

    def valid_at(self, now: float) -> bool:
        """True while neither the token nor its grant is revoked or expired."""
        return (
            not self.revoked
            and not self.grant.revoked
            and (self.expires_at is None or now < self.expires_at)
        )


@attrs.define(kw_only=True, eq=False)
class RefreshToken:
    """An issued refresh token; ``used`` once rotated away."""

    value: str = attrs.field(repr=False)
    grant: Grant = attrs.field(repr=False)
    expires_at: float | None
    used: bool = False


@attrs.define(kw_only=True, eq=False)
class DeviceAuthorization:
    """One device code and its user code (RFC 8628 3.2)."""

    device_code: str = attrs.field(repr=False)
    user_code: str
    client_id: str
    scope: Scope | None
    issued_at: float
    expires_at: float
    interval: float
    status: Literal["pending", "approved", "denied", "redeemed"] = "pending"
    polls: int = 0
    last_poll: float | None = None
    expired_answered: bool = False
    slow_down_next: bool = False
    grant: Grant | None = None
    jkt: str | None = None  # RFC 9449 10: dpop_jkt, the key its token requests must prove

    def expired_at(self, now: float) -> bool:
        """True once the code's lifetime is over."""
        return now >= self.expires_at


@attrs.frozen(kw_only=True)
class IssuedTokens:
    """The fields of a successful token answer (RFC 6749 5.1)."""

    access_token: str = attrs.field(repr=False)
    expires_in: int | None
    refresh_token: str | None = attrs.field(repr=False)
    scope: Scope | None
    grant: Grant | None = attrs.field(default=None, repr=False, eq=False)
    dpop: bool = False  # token_type DPoP (RFC 9449 5)


def _token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@attrs.define(kw_only=True)
class AuthorizationState:
    """Every code, grant and token of one server, and the rules that change them."""

    interval: float | str | None = 5
    code_lifetime: int = 600
    access_token_lifetime: int | None = 3600
    refresh_token_lifetime: int | None = None
    issue_refresh_tokens: bool = True
    rotate_refresh_tokens: bool = True
    enforce_interval: bool = True
    auto_approve_after: int | None = None
    expired_token_once: bool = False
    user_code_alphabet: str = "BCDFGHJKLMNPQRSTVWXZ"
    user_code_groups: tuple[int, ...] = (4, 4)
    user_code_separator: str = "-"
    stats: ServerStats = attrs.Factory(ServerStats)
    _codes: dict[str, DeviceAuthorization] = attrs.Factory(dict)  # by device code
    _user_codes: dict[str, DeviceAuthorization] = attrs.Factory(dict)  # by normalized user code
    _access: dict[str, AccessToken] = attrs.Factory(dict)
    _refresh: dict[str, RefreshToken] = attrs.Factory(dict)
    _grants: list[Grant] = attrs.Factory(list)

    # -- device authorization (RFC 8628 3.1, 3.2) -------------------------------------------

    def issue_code(
        self, *, client_id: str, scope: Scope | None, now: float, jkt: str | None = None
    ) -> DeviceAuthorization:
        """Create a pending device code and its unique user code (bound to the DPoP key
        ``jkt`` names, when given)."""
        while True:
            groups = [
                "".join(secrets.choice(self.user_code_alphabet) for _ in range(length))
                for length in self.user_code_groups
            ]
            user_code = self.user_code_separator.join(groups)
            if normalize_user_code(user_code) not in self._user_codes:
                break
        code = DeviceAuthorization(
            device_code=_token("dc_"),
            user_code=user_code,
            client_id=client_id,
            scope=scope,
            issued_at=now,
            expires_at=now + self.code_lifetime,
            interval=enforced_interval(self.interval),
            jkt=jkt,
        )
        self._codes[code.device_code] = code
        self._user_codes[normalize_user_code(user_code)] = code
        self.stats.device_authorizations += 1
        if self.auto_approve_after == 0:
            code.status = "approved"
        return code

    def find(self, user_code: str) -> DeviceAuthorization | None:
        """The code whose user code matches ``user_code`` (case, "-" and spaces ignored)."""
        return self._user_codes.get(normalize_user_code(user_code))

    def pending(self, now: float) -> list[DeviceAuthorization]:
        """Codes that wait for the user's decision, oldest first."""
        return [c for c in self._codes.values() if c.status == "pending" and not c.expired_at(now)]

    def decide(self, code: DeviceAuthorization, *, approve: bool, now: float) -> None:
        """Approve or deny a pending code; ValueError when it is not pending any more."""
        if code.expired_at(now):
            raise ValueError(f"user code {code.user_code} has expired")
        if code.status != "pending":
            raise ValueError(f"user code {code.user_code} is already {code.status}")
        code.status = "approved" if approve else "denied"

    # -- token endpoint: device_code grant (RFC 8628 3.4, 3.5) ------------------------------

    def poll(
        self, *, device_code: str, client_id: str, now: float, jkt: str | None = None
    ) -> IssuedTokens:
        """Answer one poll: tokens, or raise OAuthFailure with the RFC 8628 3.5 error.

        ``jkt``: the thumbprint of the key of the poll's DPoP proof; the grant is bound to it."""
        code = self._codes.get(device_code)
        if code is None or code.client_id != client_id:
            # RFC 6749 5.2: a code issued to another client is invalid_grant as well.
            raise self._invalid_grant("unknown device_code")
        if code.jkt is not None and jkt != code.jkt:
            # RFC 9449 10.1: only the key the device code was bound to may redeem it.
            self.stats.dpop_proofs_refused += 1
            raise OAuthFailure("invalid_dpop_proof", "the device code is bound to another key")
        self.stats.polls += 1
        code.polls += 1
        last, code.last_poll = code.last_poll, now
        if code.status == "redeemed":
            # The client polled after success: punish it as some servers do.
            assert code.grant is not None  # set when the code was redeemed
            self._revoke_grant(code.grant)
            raise self._invalid_grant("device_code was already redeemed; its grant is revoked")
        if code.expired_at(now):
            if self.expired_token_once and code.expired_answered:
                raise self._invalid_grant("device_code has expired")
            code.expired_answered = True
            raise OAuthFailure("expired_token", "the device code has expired")
        if code.status == "denied":
            raise OAuthFailure("access_denied", "the user denied the request")
        too_soon = last is not None and now - last + POLL_TOLERANCE < code.interval
        if code.slow_down_next or (self.enforce_interval and too_soon):
            code.slow_down_next = False
            # RFC 8628 3.5: too fast; the interval grows by 5 s for this and all later polls.
            code.interval += SLOW_DOWN_STEP
            self.stats.slow_downs += 1
            waited = "" if last is None else f"polled {now - last:.3f} s after the last poll; "
            raise OAuthFailure(
                "slow_down", f"{waited}wait {code.interval} s", interval=code.interval
            )
        if code.status == "pending":
            if self.auto_approve_after is not None and code.polls >= self.auto_approve_after:
                code.status = "approved"  # the next poll gets the tokens
            raise OAuthFailure("authorization_pending", "the user has not decided yet")
        code.status = "redeemed"
        code.grant = Grant(client_id=code.client_id, scope=code.scope, subject="user", jkt=jkt)
        self._grants.append(code.grant)
        return self._issue(code.grant, code.scope, now)

    # -- token endpoint: refresh_token grant (RFC 6749 6) -----------------------------------

    def refresh(
        self,
        *,
        refresh_token: str,
        client_id: str,
        scope: Scope | None,
        now: float,
        jkt: str | None = None,
    ) -> IssuedTokens:
        """Answer a refresh request: new tokens, or raise OAuthFailure.

        ``jkt``: the thumbprint of the request's DPoP proof key, which must be the grant's key
        when the grant is DPoP-bound (RFC 9449 5)."""
        record = self._refresh.get(refresh_token)
        if record is None or record.grant.client_id != client_id:
            raise self._invalid_grant("unknown refresh_token")
        grant = record.grant
        if grant.revoked:
            raise self._invalid_grant("the grant of this refresh_token was revoked")
        if record.used:
            # RFC 9700 4.14.2: a rotated refresh token came back; someone holds a stale copy
            # (or stole it), so the whole grant is revoked.
            self._revoke_grant(grant)
            raise self._invalid_grant("refresh_token was already used; its grant is revoked")
        if record.expires_at is not None and now >= record.expires_at:
            raise self._invalid_grant("refresh_token has expired")
        if grant.jkt is not None and jkt != grant.jkt:
            # RFC 9449 5: the refresh token is bound to the key that obtained it.
            self.stats.dpop_proofs_refused += 1
            raise OAuthFailure(
                "invalid_dpop_proof",
                "the refresh token is bound to another key"
                if jkt is not None
                else "the refresh token is DPoP-bound; a DPoP proof is required",
            )
        if grant.jkt is None and jkt is not None:
            raise OAuthFailure("invalid_dpop_proof", "a Bearer grant is not refreshed with DPoP")
        if scope is not None and not set(scope) <= set(grant.scope or ()):
            # RFC 6749 6: the scope may only narrow what the resource owner granted.
            raise OAuthFailure("invalid_scope", "the requested scope exceeds the granted scope")
        if self.rotate_refresh_tokens:
            record.used = True
        self.stats.refreshes += 1
        return self._issue(
            grant,
            scope if scope is not None else grant.scope,
            now,
            keep_refresh=not self.rotate_refresh_tokens,
        )

    # -- tokens -----------------------------------------------------------------------------

    def issue_grant(self, *, client_id: str, scope: Scope | None, now: float) -> IssuedTokens:
        """Create a grant directly, as if a device code had just been approved and redeemed."""
        grant = Grant(client_id=client_id, scope=scope, subject="user")
        self._grants.append(grant)
        return self._issue(grant, scope, now)

    def _issue(
        self, grant: Grant, scope: Scope | None, now: float, *, keep_refresh: bool = False
    ) -> IssuedTokens:
        access = AccessToken(
            value=_token("at_"),
            grant=grant,
            scope=scope,
            expires_at=_deadline(now, self.access_token_lifetime),
            jkt=grant.jkt,
        )
        grant.access_tokens.append(access)
        self._access[access.value] = access
        refresh_value: str | None = None
        # RFC 6749 6: without rotation the answer carries no refresh token; the client keeps
        # the one it has.
        if self.issue_refresh_tokens and not keep_refresh:
            refresh = RefreshToken(
                value=_token("rt_"),
                grant=grant,
                expires_at=_deadline(now, self.refresh_token_lifetime),
            )
            grant.refresh_tokens.append(refresh)
            self._refresh[refresh.value] = refresh
            refresh_value = refresh.value
        self.stats.tokens_issued += 1
        return IssuedTokens(
            access_token=access.value,
            expires_in=self.access_token_lifetime,
            refresh_token=refresh_value,
            scope=scope,
            grant=grant,
            dpop=grant.jkt is not None,
        )

    def access_token(self, value: str, now: float) -> AccessToken | None:
        """The access token ``value`` if it is valid at ``now``, else None."""
        record = self._access.get(value)
        if record is None or not record.valid_at(now):
            return None
        return record

    def revoke(self, *, token: str, client_id: str) -> None:
        """RFC 7009 2.1: revoke a token of ``client_id``; unknown tokens are ignored.

        Revoking a refresh token revokes its whole grant (the RFC's SHOULD); revoking an access
        token revokes only that token.
        """
        refresh = self._refresh.get(token)
        if refresh is not None and refresh.grant.client_id == client_id:
            self._revoke_grant(refresh.grant)
            return
        access = self._access.get(token)
        if access is not None and access.grant.client_id == client_id:
            access.revoked = True

    def revoke_all(self) -> None:
        """Revoke every grant (and so every token) issued so far."""
        for grant in self._grants:
            self._revoke_grant(grant)

    def expire_access_tokens(self, now: float) -> None:
        """Make every access token issued so far expire at ``now``."""
        for record in self._access.values():
            if record.expires_at is None or record.expires_at > now:
                record.expires_at = now

    def _revoke_grant(self, grant: Grant) -> None:
        if not grant.revoked:
            grant.revoked = True
            self.stats.grants_revoked += 1

    def _invalid_grant(self, description: str) -> OAuthFailure:
        self.stats.invalid_grants += 1
        return OAuthFailure("invalid_grant", description)


def enforced_interval(advertised: float | str | None) -> float:
    """The interval a compliant client keeps to, given the one the server advertised.

    RFC 8628 3.2: a client that is given no interval MUST use 5 seconds; deviceflow's clients
    also use 5 for zero or a value that is not a number, so the server holds them to that.
    """
    if isinstance(advertised, str):
        try:
            advertised = float(advertised)
        except ValueError:
            advertised = None
    if advertised is None or not advertised > 0 or advertised == float("inf"):
        return 5
    return advertised


def _deadline(now: float, lifetime: int | None) -> float | None:
    return None if lifetime is None else now + lifetime
