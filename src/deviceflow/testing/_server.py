"""AuthorizationServer: a compliant RFC 8628 authorization server on aiohttp.web, for tests.

The rules (codes, grants, tokens) live in ``_state.py`` without HTTP; this module is the HTTP
edge: routing, request parsing, client authentication, the provider profile's answer format,
fault injection and the request log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode

import attrs
from aiohttp import web
from multidict import CIMultiDict

from deviceflow._clock import Clock, SystemClock

from . import _page
from ._faults import Endpoint, Fault, FaultList
from ._profiles import PROFILES, Profile
from ._state import (
    DEVICE_CODE_GRANT,
    REFRESH_TOKEN_GRANT,
    AuthorizationState,
    DeviceAuthorization,
    IssuedTokens,
    OAuthFailure,
    Scope,
    ServerStats,
    normalize_user_code,
)

__all__ = ["AuthorizationServer", "RecordedRequest"]

#: Request bodies above this size are refused (413): nothing the protocol sends comes close.
MAX_BODY = 64 * 1024
#: Most parameters a request may carry.
MAX_FIELDS = 64
#: RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")
_REALM = "deviceflow test server"


class _Unset(enum.Enum):
    """Marks an argument of configure() as not given (None is a meaningful value there)."""

    UNSET = enum.auto()


_Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


@attrs.frozen(kw_only=True)
class _Registration:
    """A client registered at the profile's registration endpoint (RFC 7591, AWS)."""

    secret: str = attrs.field(repr=False)
    scope: Scope | None
    expires_at: float  # monotonic


@attrs.define(kw_only=True)
class RecordedRequest:
    """One request the server received, in ``server.requests``.

    - ``at``: the server clock's monotonic time when the request arrived.
    - ``endpoint``: ``"discovery"``, ``"registration"``, ``"device"``, ``"token"``,
      ``"revoke"``, ``"resource"``, ``"verification"`` or ``"unknown"``.
    - ``form``: the body's parameters (form-encoded, or JSON for a ``request_format="json"``
      profile) under their RFC names; empty for a body that could not be parsed.
    - ``query``: the query string's parameters.
    - ``headers``: the request headers (case-insensitive lookup).
    - ``status``: the answer's HTTP status, filled in once answered; None while the request is in
      flight or when a fault dropped the connection.
    - ``fault``: the injected fault that applied to this request, if any.
    """

    at: float
    method: str
    path: str
    endpoint: str
    form: dict[str, str] = attrs.Factory(dict)
    query: dict[str, str] = attrs.Factory(dict)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    status: int | None = None
    fault: Fault | None = None


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
    - ``allow_remote``: the server refuses to bind to a non-loopback ``host`` unless this is
      True: its verification page approves codes for anyone who can reach it.
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
        allow_remote: bool = False,
    ) -> None:
        if not allow_remote and not _is_loopback(host):
            raise ValueError(
                f"host {host!r} is not a loopback address; pass allow_remote=True to expose the "
                "test server (anyone who reaches it can approve codes)"
            )
        if isinstance(profile, str):
            try:
                profile = PROFILES[profile]
            except KeyError:
                raise ValueError(
                    f"unknown profile {profile!r}; known: {sorted(PROFILES)}"
                ) from None
        if issuer_path and (not issuer_path.startswith("/") or issuer_path.endswith("/")):
            raise ValueError("issuer_path must start with '/' and not end with '/' (or be '')")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._host = host
        self._port = port
        self._profile = profile
        self._issuer_path = issuer_path
        self._interval_as_string = interval_as_string
        self._clients = dict(clients) if clients is not None else None
        self._registered: dict[str, _Registration] = {}
        self._scopes_supported = list(scopes_supported) if scopes_supported is not None else None
        self._metadata_overrides = dict(metadata_overrides or {})
        self._state = AuthorizationState(expired_token_once=profile.expired_token_once)
        self._state.user_code_alphabet = profile.user_code_alphabet
        self._state.user_code_groups = profile.user_code_groups
        self._state.user_code_separator = profile.user_code_separator
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
        self._faults = FaultList()
        self._requests: list[RecordedRequest] = []
        self._issued: asyncio.Queue[str] | None = None
        self._csrf_key = secrets.token_bytes(32)
        self._runner: web.AppRunner | None = None
        self._base: str | None = None
        self._bound_port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; ``async with`` calls this for you."""
        if self._runner is not None:
            raise RuntimeError("the server is already started")
        app = web.Application(client_max_size=MAX_BODY, client_max_fields=MAX_FIELDS)
        self._add_routes(app)
        # A handler whose client went away (say, after a delay fault) is cancelled, and close
        # does not wait long for handlers still running: this is a test server.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=0.1,
            handler_cancellation=True,
        )
        await runner.setup()
        # "localhost" may resolve to both ::1 and 127.0.0.1, which would get two different free
        # ports; bind one address so the issuer names exactly one server.
        bind = "127.0.0.1" if self._host == "localhost" else self._host
        try:
            site = web.TCPSite(runner, bind, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._base = f"http://{host}:{self._bound_port}"

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
        where = self._base + self._issuer_path if self._base else "not started"
        return f"<AuthorizationServer {where} profile={self._profile.name!r}>"

    # -- where things are ---------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer identifier, e.g. ``http://127.0.0.1:41873`` (no trailing slash)."""
        return self._started_base() + self._issuer_path

    def _started_base(self) -> str:
        if self._base is None:
            raise RuntimeError("the server is not started; use 'async with' or await start()")
        return self._base

    @property
    def url(self) -> str:
        """The base URL of the server's endpoints (the issuer)."""
        return self.issuer

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._bound_port is None:
            raise RuntimeError("the server is not started; use 'async with' or await start()")
        return self._bound_port

    @property
    def registration_endpoint(self) -> str | None:
        """URL of the client registration endpoint, when the profile has one (AWS)."""
        path = self._profile.registration_path
        return None if path is None else self.issuer + path

    @property
    def device_authorization_endpoint(self) -> str:
        """URL of the device authorization endpoint (RFC 8628 3.1)."""
        return self.issuer + self._profile.device_authorization_path

    @property
    def token_endpoint(self) -> str:
        """URL of the token endpoint (RFC 6749 3.2)."""
        return self.issuer + self._profile.token_path

    @property
    def revocation_endpoint(self) -> str:
        """URL of the revocation endpoint (RFC 7009)."""
        return self.issuer + self._profile.revocation_path

    @property
    def verification_uri(self) -> str:
        """URL of the HTML verification page (RFC 8628 3.2 ``verification_uri``)."""
        return self.issuer + self._profile.verification_path

    @property
    def resource_url(self) -> str:
        """URL of the protected resource that accepts the issued access tokens (``/api/me``)."""
        return self.issuer + self._profile.resource_path

    @property
    def openid_configuration_url(self) -> str:
        """URL of the OpenID Connect Discovery document."""
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def oauth_metadata_url(self) -> str:
        """URL of the RFC 8414 metadata document (the well-known part before the issuer path)."""
        return f"{self._started_base()}/.well-known/oauth-authorization-server{self._issuer_path}"

    @property
    def metadata(self) -> dict[str, Any]:
        """The discovery document both well-known paths serve (a fresh copy)."""
        grant_types = [DEVICE_CODE_GRANT]
        if self._state.issue_refresh_tokens:
            grant_types.append(REFRESH_TOKEN_GRANT)
        auth_methods = ["none", "client_secret_post", "client_secret_basic"]
        template = self._profile.metadata_issuer
        document: dict[str, Any] = {
            "issuer": (
                self.issuer
                if template is None
                else template.format(base=self._started_base(), issuer=self.issuer)
            ),
            "device_authorization_endpoint": self.device_authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "grant_types_supported": grant_types,
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
        }
        if self._scopes_supported is not None:
            document["scopes_supported"] = list(self._scopes_supported)
        if self.registration_endpoint is not None:
            document["registration_endpoint"] = self.registration_endpoint
        for key, value in self._metadata_overrides.items():
            if value is None:
                document.pop(key, None)
            else:
                document[key] = value
        return document

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
        queue = self._queue()
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no device code was issued within {timeout} s") from None

    def polls(self, device_code: str | None = None) -> list[float]:
        """Monotonic times of the device_code grant token requests, of one code when given.

        Read from the request log, so polls answered by an injected fault count too.
        """
        return [
            record.at
            for record in self._requests
            if record.endpoint == "token"
            and record.form.get("grant_type") == DEVICE_CODE_GRANT
            and (device_code is None or record.form.get("device_code") == device_code)
        ]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order of arrival (a copy of the log)."""
        return list(self._requests)

    @property
    def faults(self) -> FaultList:
        """The armed faults: ``server.faults.add(Fault(endpoint="token", status=503))``."""
        return self._faults

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

    def issue_tokens(self, client_id: str, *, scope: str | None = None) -> dict[str, Any]:
        """Create a grant without a device flow and return its token answer (RFC 6749 5.1).

        Handy to seed a token store; the answer uses RFC field names and a space-separated
        ``scope`` whatever the profile.
        """
        scopes = tuple(scope.split()) if scope is not None else ()
        issued = self._state.issue_grant(
            client_id=client_id, scope=scopes or None, now=self._clock.monotonic()
        )
        return self._token_payload(issued, profile_numbers=False)

    # -- routing ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        prefix, profile = self._issuer_path, self._profile
        routes: list[tuple[str, str, Endpoint, _Handler]] = []
        if profile.discovery:
            routes += [
                ("GET", f"{prefix}/.well-known/openid-configuration", "discovery", self._discovery),
                (
                    "GET",
                    f"/.well-known/oauth-authorization-server{prefix}",
                    "discovery",
                    self._discovery,
                ),
            ]
        if profile.registration_path is not None:
            routes.append(
                ("POST", prefix + profile.registration_path, "registration", self._register)
            )
        routes += [
            ("POST", prefix + profile.device_authorization_path, "device", self._device),
            ("POST", prefix + profile.token_path, "token", self._token),
            ("POST", prefix + profile.revocation_path, "revoke", self._revoke),
            ("GET", prefix + profile.resource_path, "resource", self._resource),
            ("GET", prefix + profile.verification_path, "verification", self._page_get),
            ("POST", prefix + profile.verification_path, "verification", self._page_post),
        ]
        allowed: dict[str, set[str]] = {}
        names: dict[str, Endpoint] = {}
        for method, path, endpoint, handler in routes:
            app.router.add_route(method, path, self._wrap(endpoint, handler))
            allowed.setdefault(path, set()).add(method)
            names[path] = endpoint

        async def other(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
            methods = allowed.get(request.path)
            if methods is not None:
                return web.Response(status=405, headers={"Allow": ", ".join(sorted(methods))})
            return web.Response(status=404, text="not found")

        app.router.add_route("*", "/{tail:.*}", self._wrap(names, other))

    def _wrap(
        self, endpoint: Endpoint | Mapping[str, Endpoint], handler: _Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler that logs the request, applies faults, parses, then answers.

        ``endpoint`` is a mapping from path to endpoint name for the catch-all route, which
        answers 404 or 405 without reading the body.
        """

        async def handle(request: web.Request) -> web.StreamResponse:
            if isinstance(endpoint, str):
                name, parse = endpoint, True
            else:
                name, parse = endpoint.get(request.path, "unknown"), False
            record = RecordedRequest(
                at=self._clock.monotonic(),
                method=request.method,
                path=request.path,
                endpoint=name,
                query=dict(request.query),
                headers=CIMultiDict(request.headers),
            )
            self._requests.append(record)
            response = await self._respond(request, record, handler, parse=parse)
            dropped = record.fault is not None and record.fault.drop
            record.status = None if dropped else response.status
            return response

        return handle

    async def _respond(
        self, request: web.Request, record: RecordedRequest, handler: _Handler, *, parse: bool
    ) -> web.StreamResponse:
        problem: OAuthFailure | None = None
        params: dict[str, str] = {}
        api = record.endpoint != "verification"
        if parse and request.method == "POST":
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._error(
                    request, OAuthFailure("invalid_request", "request body too large"), status=413
                )
            try:
                raw = self._decode(request, body, api=api)
            except OAuthFailure as failure:
                problem = failure
            else:
                record.form = dict(raw)
                # RFC 6749 3.1: a parameter sent without a value is treated as omitted.
                params = {key: value for key, value in raw.items() if value}
        fault = self._faults.take(record.endpoint)
        if fault is not None:
            record.fault = fault
            response = await self._fault_response(request, fault)
            if response is not None:
                return response
        try:
            if problem is not None:
                raise problem
            return await handler(request, params)
        except OAuthFailure as failure:
            return self._error(request, failure)

    # -- request parsing and client authentication --------------------------------------------

    def _decode(self, request: web.Request, body: bytes, *, api: bool) -> dict[str, str]:
        """The body's parameters under their RFC names; OAuthFailure when it is malformed."""
        if api and self._profile.request_format == "json":
            if request.content_type != "application/json":
                raise OAuthFailure("invalid_request", "the body must be application/json")
            pairs = _json_pairs(body)
        else:
            if request.content_type != "application/x-www-form-urlencoded":
                raise OAuthFailure(
                    "invalid_request", "the body must be application/x-www-form-urlencoded"
                )
            pairs = _form_pairs(body)
        params: dict[str, str] = {}
        names = self._profile.request_field_names if api else {}
        rename = {v: k for k, v in names.items()}
        for key, value in pairs:
            if key in names and key not in rename:
                # The provider has its own name for this parameter (AWS: clientId): the RFC's
                # is unknown to it.
                raise OAuthFailure(
                    "invalid_request", f"unknown parameter {key!r}; use {names[key]!r}"
                )
            name = rename.get(key, key)
            if name in params:
                # RFC 6749 3.1: parameters MUST NOT be included more than once.
                raise OAuthFailure("invalid_request", f"parameter {name!r} is repeated")
            params[name] = value
        return params

    def _authenticate(self, request: web.Request, params: Mapping[str, str]) -> str:
        """The authenticated (or, for public clients, identified) client_id (RFC 6749 2.3)."""
        basic: tuple[str, str] | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, credentials = header.strip().partition(" ")
            if scheme.lower() == "basic":
                basic = _basic_credentials(credentials)
        form_id, form_secret = params.get("client_id"), params.get("client_secret")
        secret: str | None
        if basic is not None:
            if form_secret is not None:
                # RFC 6749 2.3: a client MUST NOT use more than one authentication method.
                raise OAuthFailure("invalid_request", "more than one client authentication method")
            if form_id is not None and form_id != basic[0]:
                raise OAuthFailure("invalid_request", "client_id differs from the Basic user")
            client_id, secret = basic
        elif form_id is None:
            raise OAuthFailure("invalid_request", "client_id is missing")
        else:
            client_id, secret = form_id, form_secret
        registration = self._registered.get(client_id)
        if registration is not None:
            if secret is None or not hmac.compare_digest(
                secret.encode(), registration.secret.encode()
            ):
                raise OAuthFailure(
                    "invalid_client",
                    "client authentication failed",
                    basic_auth_attempted=basic is not None,
                )
            if self._clock.monotonic() >= registration.expires_at:
                raise OAuthFailure("invalid_client", "the client registration has expired")
            return client_id
        if self._clients is None and self._profile.registration_path is None:
            return client_id
        if self._clients is None or client_id not in self._clients:
            raise OAuthFailure(
                "invalid_client", "unknown client", basic_auth_attempted=basic is not None
            )
        expected = self._clients[client_id]
        if expected is not None and (
            secret is None or not hmac.compare_digest(secret.encode(), expected.encode())
        ):
            raise OAuthFailure(
                "invalid_client",
                "client authentication failed",
                basic_auth_attempted=basic is not None,
            )
        return client_id

    @staticmethod
    def _secret_presented(request: web.Request, params: Mapping[str, str]) -> bool:
        header = request.headers.get("Authorization", "").strip().lower()
        return params.get("client_secret") is not None or header.startswith("basic ")

    def _parse_scope(self, value: str | None) -> Scope | None:
        if value is None:
            return None
        profile = self._profile
        separator = profile.request_scope_separator or profile.scope_separator
        scope = tuple(part for part in value.split(separator) if part)
        if not scope:
            return None
        for token in scope:
            if not _SCOPE_TOKEN.fullmatch(token):
                raise OAuthFailure("invalid_scope", "malformed scope")
            if self._scopes_supported is not None and token not in self._scopes_supported:
                raise OAuthFailure("invalid_scope", f"scope {token!r} is not supported")
        return scope

    def _find(self, user_code: str) -> DeviceAuthorization:
        code = self._state.find(user_code)
        if code is None:
            raise KeyError(f"no device code has the user code {user_code!r}")
        return code

    def _queue(self) -> asyncio.Queue[str]:
        if self._issued is None:
            self._issued = asyncio.Queue()
        return self._issued

    # -- answers ------------------------------------------------------------------------------

    def _wants_json(self, request: web.Request) -> bool:
        fmt = self._profile.response_format
        if fmt == "negotiate":
            return "application/json" in request.headers.get("Accept", "").lower()
        return fmt == "json"

    def _answer(
        self,
        request: web.Request,
        payload: Mapping[str, Any],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        names = self._profile.response_field_names
        renamed = {names.get(key, key): value for key, value in payload.items()}
        if self._wants_json(request):
            response = web.json_response(renamed, status=status)
        else:
            response = web.Response(
                text=urlencode(renamed, doseq=True),
                status=status,
                content_type="application/x-www-form-urlencoded",
            )
        # RFC 6749 5.1: answers with tokens or codes must not be cached.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        response.headers.update(headers or {})
        return response

    def _error(
        self, request: web.Request, failure: OAuthFailure, *, status: int | None = None
    ) -> web.Response:
        profile = self._profile
        code = failure.error
        if failure.grant_type == REFRESH_TOKEN_GRANT and code in profile.refresh_error_aliases:
            code = profile.refresh_error_aliases[code]
        else:
            code = profile.error_aliases.get(code, code)
        payload: dict[str, Any] = {
            "error": code,
            "error_description": failure.description,
        }
        if failure.interval is not None and profile.slow_down_includes_interval:
            payload["interval"] = self._number(failure.interval)
        payload.update(profile.error_extra.get(failure.error, {}))
        headers = {}
        if failure.error == "invalid_client":
            # RFC 6749 5.2 and RFC 7235: a 401 names the scheme the client may use.
            headers["WWW-Authenticate"] = f'Basic realm="{_REALM}"'
        if status is None:
            status = profile.status_for(failure.error)
        return self._answer(request, payload, status=status, headers=headers)

    def _number(self, value: float) -> float | str:
        return str(value) if self._profile.numbers_as_strings else value

    def _token_payload(
        self, issued: IssuedTokens, *, profile_numbers: bool = True
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "access_token": issued.access_token,
            "token_type": self._profile.token_type if profile_numbers else "Bearer",
        }
        if issued.expires_in is not None:
            payload["expires_in"] = (
                self._number(issued.expires_in) if profile_numbers else issued.expires_in
            )
        if issued.refresh_token is not None:
            payload["refresh_token"] = issued.refresh_token
        if issued.scope is not None:
            separator = self._profile.scope_separator if profile_numbers else " "
            payload["scope"] = separator.join(issued.scope)
        return payload

    async def _fault_response(self, request: web.Request, fault: Fault) -> web.Response | None:
        if fault.delay > 0:
            # Real time on purpose: aiohttp's client timeouts are real time.
            await asyncio.sleep(fault.delay)
        if fault.drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)  # never written: the connection is closed
        if fault.status is None:
            return None
        body = fault.body if fault.body is not None else f"injected fault: HTTP {fault.status}"
        response = web.Response(
            body=body.encode() if isinstance(body, str) else body, status=fault.status
        )
        response.headers["Content-Type"] = fault.content_type or "text/plain; charset=utf-8"
        if fault.retry_after is not None:
            response.headers["Retry-After"] = str(fault.retry_after)
        response.headers.update(fault.headers)
        return response

    # -- endpoints ----------------------------------------------------------------------------

    async def _discovery(self, request: web.Request, params: dict[str, str]) -> web.Response:
        return web.json_response(self.metadata)

    async def _device(self, request: web.Request, params: dict[str, str]) -> web.Response:
        # RFC 8628 3.1 and 3.2.
        client_id = self._authenticate(request, params)
        scope = self._parse_scope(params.get("scope"))
        registration = self._registered.get(client_id)
        if scope is None and registration is not None:
            scope = registration.scope  # AWS: the scopes were given at registration
        code = self._state.issue_code(client_id=client_id, scope=scope, now=self._clock.monotonic())
        self._queue().put_nowait(code.user_code)
        profile = self._profile
        payload: dict[str, Any] = {
            "device_code": code.device_code,
            "user_code": code.user_code,
            "verification_uri": self.verification_uri,
        }
        complete = f"{self.verification_uri}?{urlencode({'user_code': code.user_code})}"
        if profile.verification_uri_complete:
            payload["verification_uri_complete"] = complete
        payload["expires_in"] = self._number(self._state.code_lifetime)
        interval = self._state.interval
        if isinstance(interval, (int, float)) and (
            self._interval_as_string or profile.numbers_as_strings
        ):
            interval = str(interval)
        if interval is not None:
            payload["interval"] = interval
        if profile.message_template is not None:
            payload["message"] = profile.message_template.format(
                user_code=code.user_code,
                verification_uri=self.verification_uri,
                verification_uri_complete=complete,
            )
        return self._answer(request, payload)

    async def _register(self, request: web.Request, params: dict[str, str]) -> web.Response:
        # RFC 7591 3 (AWS SSO OIDC RegisterClient): a public client registers itself and gets
        # credentials to authenticate with, client_secret_post, until they expire.
        if not params.get("client_name"):
            raise OAuthFailure("invalid_client_metadata", "client_name is missing")
        if params.get("client_type", "public") != "public":
            raise OAuthFailure("invalid_client_metadata", "only public clients are supported")
        scope = self._parse_scope(params.get("scope"))
        lifetime = self._profile.registration_lifetime
        client_id, secret = "reg_" + secrets.token_urlsafe(16), secrets.token_urlsafe(32)
        self._registered[client_id] = _Registration(
            secret=secret, scope=scope, expires_at=self._clock.monotonic() + lifetime
        )
        issued_at = int(self._clock.wall().timestamp())
        payload = {
            "client_id": client_id,
            "client_secret": secret,
            "client_id_issued_at": issued_at,
            "client_secret_expires_at": issued_at + lifetime,
        }
        return self._answer(request, payload)

    async def _token(self, request: web.Request, params: dict[str, str]) -> web.Response:
        client_id = self._authenticate(request, params)
        if self._profile.client_secret_required and not self._secret_presented(request, params):
            # Google's answer to a token request without the client secret.
            raise OAuthFailure("invalid_request", "client_secret is missing.")
        grant_type = params.get("grant_type")
        now = self._clock.monotonic()
        if grant_type is None:
            raise OAuthFailure("invalid_request", "grant_type is missing")
        if grant_type == DEVICE_CODE_GRANT:
            # RFC 8628 3.4.
            device_code = params.get("device_code")
            if device_code is None:
                raise OAuthFailure("invalid_request", "device_code is missing")
            issued = self._state.poll(device_code=device_code, client_id=client_id, now=now)
        elif grant_type == REFRESH_TOKEN_GRANT:
            # RFC 6749 6.
            refresh_token = params.get("refresh_token")
            if refresh_token is None:
                raise OAuthFailure("invalid_request", "refresh_token is missing")
            try:
                issued = self._state.refresh(
                    refresh_token=refresh_token,
                    client_id=client_id,
                    scope=self._parse_scope(params.get("scope")),
                    now=now,
                )
            except OAuthFailure as failure:
                failure.grant_type = REFRESH_TOKEN_GRANT
                raise
        else:
            raise OAuthFailure("unsupported_grant_type", "grant_type is not supported")
        return self._answer(request, self._token_payload(issued))

    async def _revoke(self, request: web.Request, params: dict[str, str]) -> web.Response:
        # RFC 7009 2.1: token_type_hint is only a hint, so every kind of token is searched;
        # 2.2: unknown and already revoked tokens are answered 200 as well.
        client_id = self._authenticate(request, params)
        token = params.get("token")
        if token is None:
            raise OAuthFailure("invalid_request", "token is missing")
        self._state.revoke(token=token, client_id=client_id)
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    async def _resource(self, request: web.Request, params: dict[str, str]) -> web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            # RFC 6750 3.1: no credentials at all get a challenge without an error code.
            return _bearer_challenge(None)
        record = self._state.access_token(token.strip(), self._clock.monotonic())
        if record is None:
            return _bearer_challenge("the access token is unknown, expired or revoked")
        body: dict[str, Any] = {"sub": record.grant.subject, "client_id": record.grant.client_id}
        if record.scope is not None:
            body["scope"] = " ".join(record.scope)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    # -- the verification page (RFC 8628 3.3) -------------------------------------------------

    async def _page_get(self, request: web.Request, params: dict[str, str]) -> web.Response:
        action = request.path
        typed = request.query.get("user_code")
        if typed is None:
            return _html(_page.entry_page(action=action))
        code = self._state.find(typed)
        now = self._clock.monotonic()
        if code is None or code.expired_at(now) or code.status != "pending":
            return _html(
                _page.entry_page(
                    action=action,
                    value=typed,
                    message="That code is not valid, has expired or was already used. "
                    "Check the code shown on your device and try again.",
                ),
                status=404,
            )
        scope = " ".join(code.scope) if code.scope is not None else None
        return _html(
            _page.confirm_page(
                action=action,
                user_code=code.user_code,
                client_id=code.client_id,
                scope=scope,
                csrf=self._csrf(code.user_code),
            )
        )

    async def _page_post(self, request: web.Request, params: dict[str, str]) -> web.Response:
        typed = params.get("user_code", "")
        decision = params.get("action")
        csrf = params.get("csrf", "")
        if decision not in ("approve", "deny") or not hmac.compare_digest(
            csrf.encode(), self._csrf(typed).encode()
        ):
            return _html(
                _page.result_page(
                    title="Request not accepted",
                    text="The form was incomplete or has expired. Open the link again.",
                ),
                status=400,
            )
        code = self._state.find(typed)
        try:
            if code is None:
                raise ValueError("unknown code")
            self._state.decide(code, approve=decision == "approve", now=self._clock.monotonic())
        except ValueError:
            return _html(
                _page.result_page(
                    title="Code not valid",
                    text="That code has expired or was already used. Start again on your device.",
                ),
                status=409,
            )
        if decision == "approve":
            return _html(
                _page.result_page(
                    title="Device approved",
                    text="You may close this window and return to your device.",
                )
            )
        return _html(
            _page.result_page(
                title="Request denied",
                text="The device was not given access. You may close this window.",
            )
        )

    def _csrf(self, user_code: str) -> str:
        # The confirm page's form carries this, so only a page this server rendered can decide.
        key = normalize_user_code(user_code).encode()
        return hmac.new(self._csrf_key, key, hashlib.sha256).hexdigest()


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


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise OAuthFailure("invalid_request", "the body is not valid form-encoded UTF-8") from None
    except ValueError:  # more than max_num_fields
        raise OAuthFailure("invalid_request", "too many parameters") from None


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise OAuthFailure("invalid_request", "the body is not valid JSON") from None
    if not isinstance(data, dict) or len(data) > MAX_FIELDS:
        raise OAuthFailure("invalid_request", "the body must be a JSON object")
    pairs = []
    for key, value in data.items():
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = " ".join(value)  # AWS sends scopes as a list
        if not isinstance(value, str):
            raise OAuthFailure("invalid_request", f"parameter {key!r} must be a string")
        pairs.append((key, value))
    return pairs


def _basic_credentials(credentials: str) -> tuple[str, str]:
    """client_id and secret from HTTP Basic credentials, form-url-decoded (RFC 6749 2.3.1)."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise OAuthFailure(
            "invalid_client", "malformed Basic credentials", basic_auth_attempted=True
        ) from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise OAuthFailure(
            "invalid_client", "malformed Basic credentials", basic_auth_attempted=True
        )
    return unquote_plus(user), unquote_plus(password)


def _bearer_challenge(description: str | None) -> web.Response:
    challenge = f'Bearer realm="{_REALM}"'
    body: dict[str, str] = {}
    if description is not None:
        # RFC 6750 3.1: the token is not good; say so with error="invalid_token".
        challenge += f', error="invalid_token", error_description="{description}"'
        body = {"error": "invalid_token", "error_description": description}
    return web.json_response(body, status=401, headers={"WWW-Authenticate": challenge})


def _html(text: str, *, status: int = 200) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html")
    response.headers["Content-Security-Policy"] = _page.CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
