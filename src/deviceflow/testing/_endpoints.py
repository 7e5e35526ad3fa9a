"""The test server's OAuth endpoints: discovery, registration, device authorization, token,
revocation and the protected resource.

Each handler takes the parameters the HTTP edge decoded, applies the protocol's rules through
``AuthorizationState`` and answers in the provider profile's format; a refusal is raised as an
``OAuthFailure`` and the edge answers it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlencode

import attrs
from aiohttp import web

from deviceflow._clock import Clock

from ._clients import ClientRegistry, secret_presented
from ._dpop import ProofChecker, ProofRefused
from ._edge import HttpEdge, bearer_challenge, dpop_challenge
from ._id_tokens import IdTokens
from ._profiles import Profile
from ._state import (
    DEVICE_CODE_GRANT,
    REFRESH_TOKEN_GRANT,
    AuthorizationState,
    IssuedTokens,
    OAuthFailure,
    Scope,
)
from ._urls import ServerUrls

__all__ = ["Endpoints"]

#: RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")


@attrs.define(kw_only=True)
class Endpoints:
    """The handlers of the OAuth endpoints, and the discovery document they serve.

    Every user code issued is also queued for :meth:`next_user_code`.
    """

    _edge: HttpEdge
    _state: AuthorizationState
    _clients: ClientRegistry
    _urls: ServerUrls
    _clock: Clock
    _profile: Profile
    _scopes_supported: list[str] | None
    _metadata_overrides: dict[str, Any]
    _interval_as_string: bool
    _id_tokens: IdTokens
    _dpop: ProofChecker | None = None  # DPoP (RFC 9449) on: proofs checked, tokens bound
    _issued: asyncio.Queue[str] | None = None

    async def next_user_code(self, timeout: float | None) -> str:
        """The oldest user code not yet handed out; TimeoutError after ``timeout`` real seconds."""
        queue = self._issued_codes()
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no device code was issued within {timeout} s") from None

    def _issued_codes(self) -> asyncio.Queue[str]:
        if self._issued is None:
            self._issued = asyncio.Queue()
        return self._issued

    def issue_tokens(self, client_id: str, *, scope: str | None) -> dict[str, Any]:
        """A grant created without a device flow, as its token answer in the RFC's forms."""
        scopes = tuple(scope.split()) if scope is not None else ()
        issued = self._state.issue_grant(
            client_id=client_id, scope=scopes or None, now=self._clock.monotonic()
        )
        return self._token_payload(issued, profile_numbers=False)

    def metadata(self) -> dict[str, Any]:
        """The discovery document both well-known paths serve (a fresh copy)."""
        urls = self._urls
        grant_types = [DEVICE_CODE_GRANT]
        if self._state.issue_refresh_tokens:
            grant_types.append(REFRESH_TOKEN_GRANT)
        auth_methods = ["none", "client_secret_post", "client_secret_basic"]
        template = self._profile.metadata_issuer
        document: dict[str, Any] = {
            "issuer": (
                urls.issuer
                if template is None
                else template.format(base=urls.started_base(), issuer=urls.issuer)
            ),
            "device_authorization_endpoint": urls.device_authorization_endpoint,
            "token_endpoint": urls.token_endpoint,
            "revocation_endpoint": urls.revocation_endpoint,
            "grant_types_supported": grant_types,
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
        }
        if self._scopes_supported is not None:
            document["scopes_supported"] = list(self._scopes_supported)
        if urls.registration_endpoint is not None:
            document["registration_endpoint"] = urls.registration_endpoint
        if self._profile.id_tokens:  # OpenID Connect Discovery 3
            document["jwks_uri"] = urls.jwks_uri
            document["subject_types_supported"] = ["public"]
            document["id_token_signing_alg_values_supported"] = [self._id_tokens.algorithm]
        if self._dpop is not None:
            document["dpop_signing_alg_values_supported"] = list(self._dpop.algorithms)
        for key, value in self._metadata_overrides.items():
            if value is None:
                document.pop(key, None)
            else:
                document[key] = value
        return document

    def _token_payload(
        self, issued: IssuedTokens, *, profile_numbers: bool = True
    ) -> dict[str, Any]:
        """The token answer (RFC 6749 5.1); ``profile_numbers=False`` keeps the RFC's forms."""
        payload: dict[str, Any] = {
            "access_token": issued.access_token,
            "token_type": (
                "DPoP" if issued.dpop else self._profile.token_type if profile_numbers else "Bearer"
            ),
        }
        if issued.expires_in is not None:
            payload["expires_in"] = (
                self._edge.number(issued.expires_in) if profile_numbers else issued.expires_in
            )
        if issued.refresh_token is not None:
            payload["refresh_token"] = issued.refresh_token
        if issued.scope is not None:
            separator = self._profile.scope_separator if profile_numbers else " "
            payload["scope"] = separator.join(issued.scope)
            grant = issued.grant
            if self._profile.id_tokens and "openid" in issued.scope and grant is not None:
                payload["id_token"] = self._id_tokens.issue(grant.client_id)  # OIDC Core 3.1.3.3
        return payload

    # -- handlers -----------------------------------------------------------------------------

    async def discovery(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """OpenID Connect Discovery 4 and RFC 8414 3: the metadata document."""
        return web.json_response(self.metadata())

    async def jwks(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """RFC 7517 5: the public keys the id_tokens are signed with."""
        return web.json_response(self._id_tokens.jwks())

    async def device(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """RFC 8628 3.1 and 3.2: issue a device code and a user code."""
        client_id = self._clients.authenticate(request.headers, params)
        scope = self._parse_scope(params.get("scope"))
        registration = self._clients.registration(client_id)
        if scope is None and registration is not None:
            scope = registration.scope  # AWS: the scopes were given at registration
        jkt = params.get("dpop_jkt") if self._dpop is not None else None  # RFC 9449 10
        code = self._state.issue_code(
            client_id=client_id, scope=scope, now=self._clock.monotonic(), jkt=jkt
        )
        self._issued_codes().put_nowait(code.user_code)
        profile = self._profile
        verification_uri = self._urls.verification_uri
        payload: dict[str, Any] = {
            "device_code": code.device_code,
            "user_code": code.user_code,
            "verification_uri": verification_uri,
        }
        complete = f"{verification_uri}?{urlencode({'user_code': code.user_code})}"
        if profile.verification_uri_complete:
            payload["verification_uri_complete"] = complete
        payload["expires_in"] = self._edge.number(self._state.code_lifetime)
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
                verification_uri=verification_uri,
                verification_uri_complete=complete,
            )
        return self._edge.answer(request, payload)

    async def register(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """RFC 7591 3 (AWS SSO OIDC RegisterClient): a public client registers itself.

        It gets credentials to authenticate with, client_secret_post, until they expire.
        """
        if not params.get("client_name"):
            raise OAuthFailure("invalid_client_metadata", "client_name is missing")
        if params.get("client_type", "public") != "public":
            raise OAuthFailure("invalid_client_metadata", "only public clients are supported")
        scope = self._parse_scope(params.get("scope"))
        lifetime = self._profile.registration_lifetime
        client_id, secret = self._clients.register(scope=scope, lifetime=lifetime)
        issued_at = int(self._clock.wall().timestamp())
        payload = {
            "client_id": client_id,
            "client_secret": secret,
            "client_id_issued_at": issued_at,
            "client_secret_expires_at": issued_at + lifetime,
        }
        return self._edge.answer(request, payload)

    async def token(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """The token endpoint: the device_code (RFC 8628 3.4) and refresh_token grants."""
        client_id = self._clients.authenticate(request.headers, params)
        if self._profile.client_secret_required and not secret_presented(request.headers, params):
            # Google's answer to a token request without the client secret.
            raise OAuthFailure("invalid_request", "client_secret is missing.")
        grant_type = params.get("grant_type")
        now = self._clock.monotonic()
        if grant_type is None:
            raise OAuthFailure("invalid_request", "grant_type is missing")
        jkt = self._token_proof(request)
        if grant_type == DEVICE_CODE_GRANT:
            # RFC 8628 3.4.
            device_code = params.get("device_code")
            if device_code is None:
                raise OAuthFailure("invalid_request", "device_code is missing")
            issued = self._state.poll(
                device_code=device_code, client_id=client_id, now=now, jkt=jkt
            )
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
                    jkt=jkt,
                )
            except OAuthFailure as failure:
                failure.grant_type = REFRESH_TOKEN_GRANT
                raise
        else:
            raise OAuthFailure("unsupported_grant_type", "grant_type is not supported")
        payload = self._token_payload(issued)
        if grant_type == REFRESH_TOKEN_GRANT and not self._id_tokens.on_refresh:
            payload.pop("id_token", None)  # OpenID Connect Core 12.2: it MAY be omitted
        return self._edge.answer(request, payload, headers=self._nonce())

    async def revoke(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """RFC 7009: revoke an access or refresh token."""
        # RFC 7009 2.1: token_type_hint is only a hint, so every kind of token is searched;
        # 2.2: unknown and already revoked tokens are answered 200 as well.
        client_id = self._clients.authenticate(request.headers, params)
        token = params.get("token")
        if token is None:
            raise OAuthFailure("invalid_request", "token is missing")
        self._state.revoke(token=token, client_id=client_id)
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    async def resource(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """The protected resource: who the bearer (or DPoP, RFC 9449 7) token speaks for."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme not in ("bearer", "dpop") or (scheme == "dpop" and self._dpop is None):
            # RFC 6750 3.1: no credentials at all get a challenge without an error code.
            return bearer_challenge(None)
        token = token.strip()
        record = self._state.access_token(token, self._clock.monotonic())
        if record is None:
            if scheme == "dpop":
                return self._dpop_refusal("invalid_token", "the access token is unknown")
            return bearer_challenge("the access token is unknown, expired or revoked")
        if record.jkt is not None or scheme == "dpop":
            refusal = self._resource_proof(request, token, record.jkt, scheme)
            if refusal is not None:
                return refusal
        body: dict[str, Any] = {"sub": record.grant.subject, "client_id": record.grant.client_id}
        if record.scope is not None:
            body["scope"] = " ".join(record.scope)
        return web.json_response(body, headers={"Cache-Control": "no-store", **self._nonce()})

    # -- DPoP (RFC 9449) ----------------------------------------------------------------------

    def _nonce(self) -> dict[str, str]:
        """RFC 9449 8.2: a server that wants nonces may send a fresh one with any answer."""
        dpop = self._dpop
        return {"DPoP-Nonce": dpop.nonce} if dpop is not None and dpop.require_nonce else {}

    def _refused(self, refused: ProofRefused) -> None:
        if refused.error == "use_dpop_nonce":
            self._state.stats.dpop_nonces_asked += 1
        else:
            self._state.stats.dpop_proofs_refused += 1

    def _token_proof(self, request: web.Request) -> str | None:
        """The thumbprint of the token request's proof key; None without DPoP or a proof."""
        dpop = self._dpop
        values = request.headers.getall("DPoP", [])
        if dpop is None or not values:
            return None
        try:
            return dpop.check(values, request.method, str(request.url))
        except ProofRefused as refused:
            self._refused(refused)
            raise OAuthFailure(refused.error, refused.description, headers=self._nonce()) from None

    def _resource_proof(
        self, request: web.Request, token: str, jkt: str | None, scheme: str
    ) -> web.Response | None:
        """The refusal of a resource request with a DPoP token, or None when its proof holds."""
        if jkt is None:
            return self._dpop_refusal("invalid_token", "a Bearer token is not a DPoP token")
        if scheme != "dpop":
            # RFC 9449 7.2: a DPoP-bound token presented as a bearer token is refused.
            return self._dpop_refusal("invalid_token", "the access token is DPoP-bound")
        assert self._dpop is not None
        try:
            proven = self._dpop.check(
                request.headers.getall("DPoP", []),
                request.method,
                str(request.url),
                access_token=token,
            )
        except ProofRefused as refused:
            self._refused(refused)
            return self._dpop_refusal(refused.error, refused.description)
        if proven != jkt:
            self._state.stats.dpop_proofs_refused += 1
            return self._dpop_refusal("invalid_dpop_proof", "the proof's key is not the token's")
        return None

    def _dpop_refusal(self, error: str, description: str) -> web.Response:
        algorithms = self._dpop.algorithms if self._dpop is not None else ()
        return dpop_challenge(
            error, description, algorithms=algorithms, nonce=self._nonce().get("DPoP-Nonce")
        )

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
