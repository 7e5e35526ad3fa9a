"""Who is calling: the clients the test server knows, and client authentication.

Clients come from the server's ``clients`` argument, or register themselves at the profile's
registration endpoint (RFC 7591, as AWS SSO OIDC does). :meth:`ClientRegistry.authenticate`
checks what a request presents (RFC 6749 2.3) and names the client.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import unquote_plus

import attrs

from deviceflow._clock import Clock

from ._state import OAuthFailure, Scope

__all__ = ["ClientRegistry", "Registration", "secret_presented"]


@attrs.frozen(kw_only=True)
class Registration:
    """A client registered at the profile's registration endpoint (RFC 7591, AWS)."""

    secret: str = attrs.field(repr=False)
    scope: Scope | None
    expires_at: float  # monotonic


@attrs.define(kw_only=True)
class ClientRegistry:
    """The configured and registered clients, and the check of their credentials.

    ``clients`` is the server's argument: ``None`` accepts any ``client_id`` as a public client
    unless ``registration_required`` (the profile has a registration endpoint).
    """

    _clock: Clock
    _clients: dict[str, str | None] | None
    _registration_required: bool
    _registered: dict[str, Registration] = attrs.Factory(dict)

    def register(self, *, scope: Scope | None, lifetime: int) -> tuple[str, str]:
        """A new client's id and secret, valid for ``lifetime`` seconds (RFC 7591 3.2.1)."""
        client_id, secret = "reg_" + secrets.token_urlsafe(16), secrets.token_urlsafe(32)
        self._registered[client_id] = Registration(
            secret=secret, scope=scope, expires_at=self._clock.monotonic() + lifetime
        )
        return client_id, secret

    def registration(self, client_id: str) -> Registration | None:
        """The registration of ``client_id``, None for a client that did not register."""
        return self._registered.get(client_id)

    def authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> str:
        """The authenticated (or, for public clients, identified) client_id (RFC 6749 2.3)."""
        basic: tuple[str, str] | None = None
        header = headers.get("Authorization")
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
        if self._clients is None and not self._registration_required:
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


def secret_presented(headers: Mapping[str, str], params: Mapping[str, str]) -> bool:
    """True when the request carries a client secret, in the body or as HTTP Basic."""
    header = headers.get("Authorization", "").strip().lower()
    return params.get("client_secret") is not None or header.startswith("basic ")


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
