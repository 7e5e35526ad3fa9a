"""AuthorizationServer: a compliant RFC 8628 authorization server on aiohttp.web, for tests.

This module is the facade: the server's arguments, its lifecycle (bind, serve, close), the URLs
of its endpoints and the controls a test uses (approve, deny, expire, faults, the request log).
The work happens below it: ``_app`` routes each request through the HTTP edge (``_edge``) to the
OAuth endpoints (``_endpoints``) or the verification page (``_verification``), and the rules
(codes, grants, tokens) live in ``_state`` without HTTP.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from deviceflow._clock import Clock, SystemClock

from ._app import build_app, serve
from ._clients import ClientRegistry
from ._dpop import DEFAULT_ALGORITHMS, ProofChecker
from ._edge import HttpEdge, RecordedRequest
from ._endpoints import Endpoints
from ._faults import FaultList
from ._id_tokens import Algorithm, IdTokens
from ._profiles import PROFILES, Profile
from ._state import (
    DEVICE_CODE_GRANT,
    AuthorizationState,
    DeviceAuthorization,
    ServerStats,
)
from ._urls import ServerUrls
from ._verification import VerificationPage

__all__ = ["AuthorizationServer", "RecordedRequest"]


class _Unset(enum.Enum):
    """Marks an argument of configure() as not given (None is a meaningful value there)."""

    UNSET = enum.auto()


class AuthorizationServer:
    """A compliant OAuth 2.0 Device Authorization Grant server (RFC 8628) for tests.

    It serves discovery (OpenID Connect Discovery and RFC 8414), device authorization, the
    token endpoint (device_code and refresh_token grants), revocation (RFC 7009), a protected
    resource at ``/api/me``, and an HTML verification page where a person (or a headless
    browser) enters or confirms a user code and approves or denies it. It listens on loopback,
    on a free port unless told otherwise.

    >>> async def example() -> None:
    ...     async with AuthorizationServer(auto_approve_after=0) as server:
    ...         print(server.issuer)  # e.g. http://127.0.0.1:41873

    All of the server's time (code expiry, poll spacing, token expiry, the request log) reads
    ``clock``; share a :class:`~deviceflow.testing.VirtualClock` with the client under test and
    a flow with a 5 s interval runs in microseconds.

    Arguments (all keyword-only):

    - ``interval``: the polling interval advertised; ``None`` omits it (clients then use 5 s).
      A string is sent as is; ``interval_as_string=True`` sends an int as a string.
    - ``code_lifetime``, ``access_token_lifetime``, ``refresh_token_lifetime``: seconds;
      ``None`` for tokens that never expire.
    - ``issue_refresh_tokens``; ``rotate_refresh_tokens``: each refresh returns a new refresh
      token and the old one becomes used; reusing a used one revokes the whole grant (RFC 9700
      4.14.2). Without rotation, refresh answers carry no refresh token (RFC 6749 6).
    - ``enforce_interval``: a poll sooner than the code's current interval after the previous
      poll is answered ``slow_down`` and the interval grows by 5 s (RFC 8628 3.5).
    - ``auto_approve_after``: ``N`` answers the first ``N`` polls of each code with
      ``authorization_pending`` and then approves it, so poll ``N + 1`` gets the tokens
      (``0``: approved at issue).
    - ``clients``: ``None`` accepts any ``client_id`` as a public client; otherwise
      ``{client_id: secret or None}``. Clients with a secret authenticate with
      ``client_secret_post`` or ``client_secret_basic`` (RFC 6749 2.3.1).
    - ``scopes_supported``: when given, requests for other scopes get ``invalid_scope``.
    - ``profile``: a :class:`~deviceflow.testing.Profile` or the name of one in ``PROFILES``.
    - ``issuer_path``: a path below the host where the issuer lives (``"/dvls"``); every
      endpoint moves below it and the RFC 8414 document is served at
      ``/.well-known/oauth-authorization-server/dvls``.
    - ``metadata_overrides``: entries merged into the discovery document; a ``None`` value
      removes the entry (to test clients against a wrong ``issuer`` or a missing endpoint).
    - ``id_token_algorithm``: ``"ES256"`` (default) or ``"RS256"``: how the id_tokens are
      signed that token answers carry when the scope has ``openid`` (OpenID Connect Core 3.1.3.3;
      not with profiles that issue none, such as GitHub's). The key is made when first needed
      and published at ``jwks_uri``; see :attr:`id_tokens` to change claims or rotate keys.
    - ``allow_remote``: the server refuses to bind to a non-loopback ``host`` unless this is
      True: its verification page approves codes for anyone who can reach it.
    - ``dpop``: speak DPoP (RFC 9449): advertise ``dpop_signing_alg_values_supported``
      (``dpop_algorithms``), check the proof of every token request that has one (signature,
      ``typ``, ``htm``/``htu``, ``iat`` within a minute, ``jti`` never seen before) and bind
      the grant to its key: ``token_type`` DPoP, refreshes only with a proof of that key, and
      the protected resource asks for ``Authorization: DPoP`` with a proof (``ath`` included)
      and refuses the token presented as a bearer token. Without a proof, Bearer tokens as
      before. A device code requested with ``dpop_jkt`` (RFC 9449 10) is redeemed only with
      a proof of that key. ``dpop_nonce``: proofs must also carry the server's nonce (RFC 9449
      8, 9): the first gets ``use_dpop_nonce`` and the nonce; ``rotate_dpop_nonce()`` changes
      it.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float | str | None = 5,
        interval_as_string: bool = False,
        code_lifetime: int = 600,
        access_token_lifetime: int | None = 3600,
        refresh_token_lifetime: int | None = None,
        issue_refresh_tokens: bool = True,
        rotate_refresh_tokens: bool = True,
        enforce_interval: bool = True,
        auto_approve_after: int | None = None,
        clients: Mapping[str, str | None] | None = None,
        scopes_supported: Sequence[str] | None = None,
        profile: Profile | str = "rfc",
        issuer_path: str = "",
        metadata_overrides: Mapping[str, Any] | None = None,
        id_token_algorithm: Algorithm = "ES256",
        allow_remote: bool = False,
        dpop: bool = False,
        dpop_nonce: bool = False,
        dpop_algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    ) -> None:
        profile = _checked_arguments(host, allow_remote, profile, issuer_path)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._host = host
        self._port = port
        self._profile = profile
        self._issuer_path = issuer_path
        self._state = _new_state(profile)
        self.configure(
            interval=interval,
            code_lifetime=code_lifetime,
            access_token_lifetime=access_token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
            issue_refresh_tokens=issue_refresh_tokens,
            rotate_refresh_tokens=rotate_refresh_tokens,
            enforce_interval=enforce_interval,
            auto_approve_after=auto_approve_after,
        )
        self._urls = ServerUrls(profile=profile, issuer_path=issuer_path)
        self._id_tokens = IdTokens(
            clock=self._clock,
            issuer=self._id_token_issuer,
            algorithm=id_token_algorithm,
            claims=profile.id_token_claims,
        )
        self._dpop = (
            ProofChecker(clock=self._clock, algorithms=dpop_algorithms, require_nonce=dpop_nonce)
            if dpop
            else None
        )
        self._edge = HttpEdge(profile=profile, clock=self._clock)
        self._endpoints = Endpoints(
            edge=self._edge,
            state=self._state,
            clients=ClientRegistry(
                clock=self._clock,
                clients=dict(clients) if clients is not None else None,
                registration_required=profile.registration_path is not None,
            ),
            urls=self._urls,
            clock=self._clock,
            profile=profile,
            scopes_supported=list(scopes_supported) if scopes_supported is not None else None,
            metadata_overrides=dict(metadata_overrides or {}),
            interval_as_string=interval_as_string,
            id_tokens=self._id_tokens,
            dpop=self._dpop,
        )
        self._page = VerificationPage(state=self._state, clock=self._clock)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; ``async with`` calls this for you."""
        if self._runner is not None:
            raise RuntimeError("the server is already started")
        app = build_app(
            profile=self._profile,
            issuer_path=self._issuer_path,
            edge=self._edge,
            endpoints=self._endpoints,
            page=self._page,
        )
        runner = await serve(app, host=self._host, port=self._port)
        self._runner = runner
        self._urls.bound(self._host, int(runner.addresses[0][1]))

    async def aclose(self) -> None:
        """Stop serving and close every connection (idempotent).

        The addresses, the request log and the counters stay readable afterwards.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> AuthorizationServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        base = self._urls.base
        where = base + self._issuer_path if base else "not started"
        return f"<AuthorizationServer {where} profile={self._profile.name!r}>"

    # -- where things are ---------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer identifier, e.g. ``http://127.0.0.1:41873`` (no trailing slash)."""
        return self._urls.issuer

    @property
    def url(self) -> str:
        """The base URL of the server's endpoints (the issuer)."""
        return self.issuer

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._urls.port

    @property
    def registration_endpoint(self) -> str | None:
        """URL of the client registration endpoint, when the profile has one (AWS)."""
        return self._urls.registration_endpoint

    @property
    def device_authorization_endpoint(self) -> str:
        """URL of the device authorization endpoint (RFC 8628 3.1)."""
        return self._urls.device_authorization_endpoint

    @property
    def token_endpoint(self) -> str:
        """URL of the token endpoint (RFC 6749 3.2)."""
        return self._urls.token_endpoint

    @property
    def revocation_endpoint(self) -> str:
        """URL of the revocation endpoint (RFC 7009)."""
        return self._urls.revocation_endpoint

    @property
    def jwks_uri(self) -> str:
        """URL of the JWK set the id_tokens are signed with (RFC 7517 5)."""
        return self._urls.jwks_uri

    @property
    def id_tokens(self) -> IdTokens:
        """The id_tokens the server issues: ``claims``, ``lifetime``, ``rotate()`` of the
        signing key, and ``mint()`` for tokens that are wrong on purpose."""
        return self._id_tokens

    def _id_token_issuer(self) -> str:
        template = self._profile.id_token_issuer
        if template is None:
            return self._urls.issuer
        tid = self._id_tokens.claims.get("tid", "")
        return template.format(base=self._urls.started_base(), issuer=self._urls.issuer, tid=tid)

    @property
    def verification_uri(self) -> str:
        """URL of the HTML verification page (RFC 8628 3.2 ``verification_uri``)."""
        return self._urls.verification_uri

    @property
    def resource_url(self) -> str:
        """URL of the protected resource that accepts the issued access tokens (``/api/me``)."""
        return self._urls.resource_url

    @property
    def openid_configuration_url(self) -> str:
        """URL of the OpenID Connect Discovery document."""
        return self._urls.openid_configuration_url

    @property
    def oauth_metadata_url(self) -> str:
        """URL of the RFC 8414 metadata document (the well-known part before the issuer path)."""
        return self._urls.oauth_metadata_url

    @property
    def metadata(self) -> dict[str, Any]:
        """The discovery document both well-known paths serve (a fresh copy)."""
        return self._endpoints.metadata()

    @property
    def profile(self) -> Profile:
        """The provider profile in force."""
        return self._profile

    @property
    def clock(self) -> Clock:
        """The clock all of the server's time reads."""
        return self._clock

    # -- controls -----------------------------------------------------------------------------

    def configure(
        self,
        *,
        interval: float | str | _Unset | None = _Unset.UNSET,
        code_lifetime: int | _Unset = _Unset.UNSET,
        access_token_lifetime: int | _Unset | None = _Unset.UNSET,
        refresh_token_lifetime: int | _Unset | None = _Unset.UNSET,
        issue_refresh_tokens: bool | _Unset = _Unset.UNSET,
        rotate_refresh_tokens: bool | _Unset = _Unset.UNSET,
        enforce_interval: bool | _Unset = _Unset.UNSET,
        auto_approve_after: int | _Unset | None = _Unset.UNSET,
    ) -> None:
        """Change settings while the server runs; they apply to codes and tokens issued later.

        ``server.configure(access_token_lifetime=1)`` makes the next tokens short-lived;
        ``server.configure(interval=None)`` stops advertising an interval.
        """
        state = self._state
        if not isinstance(interval, _Unset):
            state.interval = interval
        if not isinstance(code_lifetime, _Unset):
            state.code_lifetime = _positive("code_lifetime", code_lifetime)
        if not isinstance(access_token_lifetime, _Unset):
            state.access_token_lifetime = _lifetime("access_token_lifetime", access_token_lifetime)
        if not isinstance(refresh_token_lifetime, _Unset):
            state.refresh_token_lifetime = _lifetime(
                "refresh_token_lifetime", refresh_token_lifetime
            )
        if not isinstance(issue_refresh_tokens, _Unset):
            state.issue_refresh_tokens = issue_refresh_tokens
        if not isinstance(rotate_refresh_tokens, _Unset):
            state.rotate_refresh_tokens = rotate_refresh_tokens
        if not isinstance(enforce_interval, _Unset):
            state.enforce_interval = enforce_interval
        if not isinstance(auto_approve_after, _Unset):
            if auto_approve_after is not None and auto_approve_after < 0:
                raise ValueError("auto_approve_after must be None or at least 0")
            state.auto_approve_after = auto_approve_after

    def approve(self, user_code: str) -> None:
        """Approve a pending code, as the user would on the verification page.

        ``user_code`` is matched ignoring case, "-" and spaces. Raises KeyError for an unknown
        code and ValueError for one that has expired or was already decided.
        """
        self._state.decide(self._find(user_code), approve=True, now=self._clock.monotonic())

    def deny(self, user_code: str) -> None:
        """Deny a pending code: the client's next poll gets ``access_denied``."""
        self._state.decide(self._find(user_code), approve=False, now=self._clock.monotonic())

    def expire(self, user_code: str) -> None:
        """Make a code expire now: the client's next poll gets ``expired_token``."""
        code = self._find(user_code)
        code.expires_at = min(code.expires_at, self._clock.monotonic())

    def slow_down(self, user_code: str) -> None:
        """Answer the code's next poll with ``slow_down``, as a busy server would.

        The code's interval grows by 5 s (RFC 8628 3.5), so later polls must keep to it.
        """
        self._find(user_code).slow_down_next = True

    def pending_codes(self) -> list[str]:
        """User codes waiting for the user's decision, oldest first."""
        return [code.user_code for code in self._state.pending(self._clock.monotonic())]

    async def wait_for_code(self, timeout: float | None = 10.0) -> str:
        """The user code of the next device code issued (each code is handed out once).

        Codes are queued as they are issued, so a code issued before the call is not missed.
        ``timeout`` is in real seconds (``None``: wait for ever); TimeoutError when it runs out.
        """
        return await self._endpoints.next_user_code(timeout)

    def polls(self, device_code: str | None = None) -> list[float]:
        """Monotonic times of the device_code grant token requests, of one code when given.

        Read from the request log, so polls answered by an injected fault count too.
        """
        return [
            record.at
            for record in self._edge.requests
            if record.endpoint == "token"
            and record.form.get("grant_type") == DEVICE_CODE_GRANT
            and (device_code is None or record.form.get("device_code") == device_code)
        ]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order of arrival (a copy of the log)."""
        return list(self._edge.requests)

    @property
    def faults(self) -> FaultList:
        """The armed faults: ``server.faults.add(Fault(endpoint="token", status=503))``."""
        return self._edge.faults

    @property
    def stats(self) -> ServerStats:
        """Live counters of what the server did."""
        return self._state.stats

    def is_valid_access_token(self, token: str) -> bool:
        """True when ``token`` was issued here and is neither expired nor revoked."""
        return self._state.access_token(token, self._clock.monotonic()) is not None

    def revoke_all(self) -> None:
        """Revoke every grant issued so far: their access and refresh tokens stop working."""
        self._state.revoke_all()

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expire now (refresh tokens keep working)."""
        self._state.expire_access_tokens(self._clock.monotonic())

    def rotate_dpop_nonce(self) -> str:
        """Change the DPoP nonce (with ``dpop=True``): proofs carrying the old one get
        ``use_dpop_nonce`` and the new one, as after a server's nonce expired. Returns it."""
        if self._dpop is None:
            raise RuntimeError("the server was started without dpop=True")
        return self._dpop.rotate_nonce()

    def issue_tokens(self, client_id: str, *, scope: str | None = None) -> dict[str, Any]:
        """Create a grant without a device flow and return its token answer (RFC 6749 5.1).

        Handy to seed a token store; the answer uses RFC field names and a space-separated
        ``scope`` whatever the profile.
        """
        return self._endpoints.issue_tokens(client_id, scope=scope)

    def _find(self, user_code: str) -> DeviceAuthorization:
        code = self._state.find(user_code)
        if code is None:
            raise KeyError(f"no device code has the user code {user_code!r}")
        return code


def _new_state(profile: Profile) -> AuthorizationState:
    state = AuthorizationState(expired_token_once=profile.expired_token_once)
    state.user_code_alphabet = profile.user_code_alphabet
    state.user_code_groups = profile.user_code_groups
    state.user_code_separator = profile.user_code_separator
    return state


def _checked_arguments(
    host: str, allow_remote: bool, profile: Profile | str, issuer_path: str
) -> Profile:
    """The profile named by ``profile``; ValueError for arguments the server refuses."""
    if not allow_remote and not _is_loopback(host):
        raise ValueError(
            f"host {host!r} is not a loopback address; pass allow_remote=True to expose the "
            "test server (anyone who reaches it can approve codes)"
        )
    if isinstance(profile, str):
        try:
            profile = PROFILES[profile]
        except KeyError:
            raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}") from None
    if issuer_path and (not issuer_path.startswith("/") or issuer_path.endswith("/")):
        raise ValueError("issuer_path must start with '/' and not end with '/' (or be '')")
    return profile


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise ValueError(f"{name} must be positive")
    return value


def _lifetime(name: str, value: int | None) -> int | None:
    return None if value is None else _positive(name, value)
