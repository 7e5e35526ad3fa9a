"""The errors deviceflow raises.

Every error is a :class:`DeviceFlowError`, so ``except deviceflow.DeviceFlowError`` catches
everything the library can raise on purpose. Errors caused by the authorization server keep what
the server said (``error``, ``error_description``, ``error_uri`` and the HTTP status) as
attributes. No message ever contains a token, a device code, a client secret or an encryption
key; store errors may name the store key (issuer, client id and account), which is not secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AccessDeniedError",
    "ConflictError",
    "DecryptionError",
    "DeviceFlowError",
    "DiscoveryError",
    "ExpiredTokenError",
    "IdentityError",
    "InsecureEndpointError",
    "InvalidClientError",
    "InvalidGrantError",
    "KeyDerivationError",
    "LockTimeoutError",
    "OAuthError",
    "ProtocolError",
    "ReauthorizationRequiredError",
    "StoreError",
    "TransportError",
]


class DeviceFlowError(Exception):
    """Base class of every error deviceflow raises on purpose."""


class OAuthError(DeviceFlowError):
    """The authorization server answered with an OAuth error (RFC 6749 5.2, RFC 8628 3.5).

    Each subclass names the code it stands for as its class attribute ``error``
    (``AccessDeniedError.error == "access_denied"``); :func:`oauth_error_class` finds the class
    for a code. On an instance, ``error`` is the canonical error code (provider aliases are
    mapped, e.g. Entra's ``authorization_declined`` becomes ``access_denied``); ``server_error``
    keeps the code exactly as the server sent it. ``extra`` holds any other fields of the error
    body (e.g. Entra's ``error_codes``).
    """

    def __init__(
        self,
        error: str,
        description: str | None = None,
        uri: str | None = None,
        *,
        status: int | None = None,
        server_error: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.error = error
        self.description = description
        self.uri = uri
        self.status = status
        self.server_error = server_error if server_error is not None else error
        self.extra: Mapping[str, Any] = dict(extra or {})
        super().__init__(self._message())

    def _message(self) -> str:
        text = self.error
        if self.server_error != self.error:
            text += f" (sent as {self.server_error!r})"
        if self.description:
            text += f": {self.description}"
        if self.status is not None:
            text += f" [HTTP {self.status}]"
        if self.uri:
            text += f" (see {self.uri})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_oauth_error,
            (
                type(self),
                self.error,
                self.description,
                self.uri,
                self.status,
                self.server_error,
                dict(self.extra),
            ),
        )


def _rebuild_oauth_error(
    cls: type[OAuthError],
    error: str,
    description: str | None,
    uri: str | None,
    status: int | None,
    server_error: str | None,
    extra: dict[str, Any],
) -> OAuthError:
    return cls(error, description, uri, status=status, server_error=server_error, extra=extra)


class AccessDeniedError(OAuthError):
    """The user (or policy) declined the authorization request (RFC 8628 3.5 ``access_denied``)."""

    error = "access_denied"


class ExpiredTokenError(OAuthError):
    """The device code expired before the user approved it (RFC 8628 3.5 ``expired_token``).

    Start a new flow when the user asks for it.
    """

    error = "expired_token"


class InvalidGrantError(OAuthError):
    """The refresh token or device code is no longer valid (RFC 6749 5.2 ``invalid_grant``)."""

    error = "invalid_grant"


class InvalidClientError(OAuthError):
    """Client authentication failed (RFC 6749 5.2 ``invalid_client``): check id and secret."""

    error = "invalid_client"


class DiscoveryError(DeviceFlowError):
    """The provider's metadata could not be fetched or is not usable."""


class ProtocolError(DeviceFlowError):
    """The server's answer breaks the protocol (malformed body, missing field, wrong type)."""


class TransportError(DeviceFlowError):
    """The server could not be reached, or the connection failed or timed out.

    ``retryable`` is False for errors that a retry will not cure (such as a TLS certificate that
    does not verify). ``unreachable`` is True when nothing answered at all (connection refused,
    host not found): setting up a flow gives up on those within seconds, where a slow or
    failing server gets retries with backoff.
    """

    def __init__(self, message: str, *, retryable: bool = True, unreachable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = unreachable

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_transport_error, (str(self), self.retryable, self.unreachable))


def _rebuild_transport_error(
    message: str, retryable: bool, unreachable: bool = False
) -> TransportError:
    return TransportError(message, retryable=retryable, unreachable=unreachable)


class ReauthorizationRequiredError(DeviceFlowError):
    """No valid token can be had without a person approving a new device code.

    Raised by ``get_token()`` when the stored grant is gone (or was never there) and the client has
    no ``on_code`` callback to show a code with. Run ``authorize()`` (or ``deviceflow login``).
    """


class IdentityError(DeviceFlowError):
    """No verified identity: the account has no id_token, or it does not verify (OpenID Connect
    Core 3.1.3.7), or ``verify_identity`` refused who signed in.

    The message names the account and what failed, never the token.
    """


class InsecureEndpointError(DeviceFlowError):
    """An endpoint is not ``https`` (plain ``http`` is allowed only for loopback hosts)."""


class StoreError(DeviceFlowError):
    """A token store failed (I/O error, server unreachable, corrupt record)."""


class DecryptionError(StoreError):
    """A stored value could not be decrypted: wrong key or tampered data. Nothing was deleted."""


class KeyDerivationError(StoreError):
    """A store's key-derivation (scrypt) parameters were refused before anything was derived.

    They are damaged, carry no key check, or lie outside deviceflow's bounds (see
    :class:`deviceflow.stores.Passphrase`): planted to make guessing the passphrase cheap, or
    to make every start-up exhaust memory. Nothing was written with them.
    """


class ConflictError(StoreError):
    """A compare-and-set write lost: the stored version is not the one expected."""


class LockTimeoutError(StoreError):
    """A store lock could not be acquired within the allowed wait."""


_BY_CODE: dict[str, type[OAuthError]] = {
    cls.error: cls
    for cls in (AccessDeniedError, ExpiredTokenError, InvalidGrantError, InvalidClientError)
}


def oauth_error_class(code: str) -> type[OAuthError]:
    """The OAuthError subclass whose ``error`` is ``code`` (OAuthError itself for the others)."""
    return _BY_CODE.get(code, OAuthError)


def error_class(name: str) -> type[DeviceFlowError]:
    """The public error class called ``name`` (DeviceFlowError when there is none): for errors
    passed between processes by name."""
    found = globals().get(name)
    if name in __all__ and isinstance(found, type) and issubclass(found, DeviceFlowError):
        return found
    return DeviceFlowError
