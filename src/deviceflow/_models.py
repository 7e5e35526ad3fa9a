"""Value types shared by every layer: tokens, device codes, provider metadata, flow events."""

from __future__ import annotations

import enum
import json
import re
import types
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .exceptions import DeviceFlowError, ProtocolError

if TYPE_CHECKING:
    from ._dpop import DPoPKey

__all__ = [
    "AuthMethod",
    "ClientRegistration",
    "DeviceCode",
    "Dialect",
    "FlowEvent",
    "FlowState",
    "ProviderMetadata",
    "RegisteredClient",
    "Token",
]


#: How a client authenticates to the token endpoint (RFC 6749 2.3.1).
AuthMethod = Literal["none", "client_secret_post", "client_secret_basic"]


class FlowState(enum.Enum):
    """Where a device flow stands (see the state diagram in the docs)."""

    DISCOVER = "discover"
    REQUEST_CODE = "request_code"
    PENDING = "pending"
    SLOW_DOWN = "slow_down"
    GRANTED = "granted"
    EXPIRED = "expired"
    DENIED = "denied"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """True for GRANTED, EXPIRED, DENIED and FAILED: nothing follows them."""
        return self in _TERMINAL


_TERMINAL = frozenset({FlowState.GRANTED, FlowState.EXPIRED, FlowState.DENIED, FlowState.FAILED})


#: Compact JSON for stored records (one encoder: json.dumps with options builds one per call).
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
#: How COMPACT_JSON writes a string (ensure_ascii): for records written field by field.
json_str = json.encoder.encode_basestring_ascii


#: RFC 6750 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
#: The syntax of a Bearer (and a DPoP, RFC 9449 7.1) access token in an Authorization header.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def is_b64token(value: str) -> bool:
    """True when ``value`` may follow ``Bearer`` in an Authorization header (RFC 6750 2.1)."""
    return B64TOKEN.fullmatch(value) is not None


#: The ``extra`` of a token that has none: one shared read-only mapping, not a dict per token.
NO_EXTRA: Mapping[str, Any] = types.MappingProxyType({})


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("expires_at must be an aware datetime (use timezone.utc)")
    return value


@attrs.frozen(kw_only=True)
class Token:
    """An OAuth 2.0 access token with what came with it (RFC 6749 5.1).

    ``repr()`` and ``str()`` never show the access, refresh or id token.

    ``dpop_key`` is the key pair a DPoP token (``token_type`` ``"DPoP"``, RFC 9449) is bound
    to; None for a Bearer token. It is kept in the token record, not in :meth:`to_dict`.

    >>> from datetime import datetime, timezone
    >>> Token(access_token="secret", expires_at=datetime(2030, 1, 1, tzinfo=timezone.utc))
    Token(token_type='Bearer', expires_at=datetime.datetime(2030, 1, 1, 0, 0, tzinfo=datetime.timezone.utc), scope=None, has_refresh_token=False)
    """  # noqa: E501

    access_token: str = attrs.field(repr=False)
    token_type: str = "Bearer"
    expires_at: datetime | None = attrs.field(default=None, converter=_aware)
    refresh_token: str | None = attrs.field(default=None, repr=False)
    scope: str | None = None
    id_token: str | None = attrs.field(default=None, repr=False)
    extra: Mapping[str, Any] = attrs.field(factory=lambda: NO_EXTRA, repr=False)
    dpop_key: DPoPKey | None = attrs.field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"Token(token_type={self.token_type!r}, expires_at={self.expires_at!r}, "
            f"scope={self.scope!r}, has_refresh_token={self.refresh_token is not None})"
        )

    __str__ = __repr__

    def expires_within(self, seconds: float, *, now: datetime | None = None) -> bool:
        """True when the token expires within ``seconds`` from ``now`` (or is already expired).

        A token without ``expires_at`` never expires by itself.
        """
        if self.expires_at is None:
            return False
        now = now or datetime.now(timezone.utc)
        return self.expires_at - now <= timedelta(seconds=seconds)

    @property
    def authorization(self) -> str:
        """The value of an ``Authorization`` header for this token: ``Bearer <access_token>``
        (``DPoP <access_token>`` for a DPoP token, which also needs a proof: see
        ``DeviceFlowClient.request_headers``).

        ProtocolError when the access token is not an RFC 6750 b64token: a token with CR, LF or
        NUL in it would inject headers into an HTTP stack that does not refuse them.
        """
        if not is_b64token(self.access_token):
            raise ProtocolError(
                "the access token is not an RFC 6750 b64token; it is not put in a header"
            )
        return f"{self.token_type} {self.access_token}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict holding everything, secrets included (for stores), but the
        DPoP key (the token record keeps it)."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at.timestamp() if self.expires_at else None,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
            "id_token": self.id_token,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Token:
        """The inverse of :meth:`to_dict`; raises ProtocolError on a malformed record."""
        try:
            expires = data.get("expires_at")
            return cls(
                access_token=_req_str(data, "access_token"),
                token_type=_req_str(data, "token_type"),
                expires_at=(
                    datetime.fromtimestamp(float(expires), timezone.utc)
                    if expires is not None
                    else None
                ),
                refresh_token=_opt_str(data, "refresh_token"),
                scope=_opt_str(data, "scope"),
                id_token=_opt_str(data, "id_token"),
                extra=dict(extra) if (extra := data.get("extra")) else NO_EXTRA,
            )
        except DeviceFlowError:
            raise
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise ProtocolError(f"malformed stored token record ({type(exc).__name__})") from None

    def to_json(self) -> bytes:
        """The token as compact UTF-8 JSON (secrets included: encrypt before storing)."""
        return self.json_text().encode()

    def json_text(self) -> str:
        """:meth:`to_dict` as compact JSON text: the text ``COMPACT_JSON`` would write, written
        field by field at a third of the cost (a record is written on every refresh)."""
        try:
            expires = "null" if self.expires_at is None else repr(self.expires_at.timestamp())
            return (
                f'{{"access_token":{json_str(self.access_token)},'
                f'"token_type":{json_str(self.token_type)},"expires_at":{expires},'
                f'"refresh_token":{_json_opt(self.refresh_token)},"scope":{_json_opt(self.scope)},'
                f'"id_token":{_json_opt(self.id_token)},'
                f'"extra":{COMPACT_JSON.encode(self.extra) if self.extra else "{}"}}}'
            )
        except TypeError:  # a field that is not a string: leave the verdict to the encoder
            return COMPACT_JSON.encode(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes) -> Token:
        """The inverse of :meth:`to_json`; raises ProtocolError on malformed data."""
        try:
            decoded = json.loads(data)
        except (ValueError, RecursionError):
            raise ProtocolError("stored token record is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise ProtocolError("stored token record is not a JSON object")
        return cls.from_dict(decoded)


def _json_opt(value: str | None) -> str:
    return "null" if value is None else json_str(value)


def _req_str(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ProtocolError(f"stored token record: {name} is missing or not a string")
    return value


def _opt_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"stored token record: {name} is not a string")
    return value


@attrs.frozen(kw_only=True)
class DeviceCode:
    """What the device authorization endpoint issued (RFC 8628 3.2).

    Show ``user_code`` and ``verification_uri`` to the person (RFC 8628 3.3: the user code MUST be
    shown even when ``verification_uri_complete`` is opened or shown as a QR code). ``message`` is
    the provider's ready-made instruction where it sends one (Entra ID). ``device_code`` is secret
    and hidden from ``repr()``.
    """

    device_code: str = attrs.field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_at: datetime
    interval: float = 5.0
    message: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def link(self) -> str:
        """The link to show or open: ``verification_uri_complete`` when there is one."""
        return self.verification_uri_complete or self.verification_uri


@attrs.frozen(kw_only=True)
class Dialect:
    """How one provider bends the protocol: data, not code.

    - ``response_aliases``: provider field name -> RFC name, e.g. Google's ``verification_url``
      -> ``verification_uri``, AWS's ``accessToken`` -> ``access_token``.
    - ``request_names``: RFC parameter name -> the provider's name (AWS: ``device_code`` ->
      ``deviceCode``).
    - ``error_aliases``: provider error code -> RFC error code, e.g. Entra's
      ``authorization_declined`` -> ``access_denied``.
    - ``request_format``: ``form`` (RFC 6749) or ``json`` (AWS SSO OIDC).
    - ``scope_separator``: how the provider joins scopes in requests (RFC 6749 3.3: a space).
    - ``list_params``: parameters, under the provider's names, that a JSON body carries as
      arrays of their space-separated values (AWS RegisterClient's ``scopes``).
    """

    response_aliases: Mapping[str, str] = attrs.field(factory=dict)
    request_names: Mapping[str, str] = attrs.field(factory=dict)
    error_aliases: Mapping[str, str] = attrs.field(factory=dict)
    request_format: Literal["form", "json"] = "form"
    scope_separator: str = " "
    list_params: frozenset[str] = frozenset()

    def json_body(self, params: Mapping[str, str]) -> dict[str, str | list[str]]:
        """A JSON request body from ``params`` (provider names): ``list_params`` become arrays."""
        return {
            name: value.split() if name in self.list_params else value
            for name, value in params.items()
        }


#: Aliases every provider gets: names seen in the wild for the same RFC fields and errors.
DEFAULT_RESPONSE_ALIASES: Mapping[str, str] = {
    "verification_url": "verification_uri",
    "verification_url_complete": "verification_uri_complete",
}
DEFAULT_ERROR_ALIASES: Mapping[str, str] = {
    "authorization_declined": "access_denied",
    "code_expired": "expired_token",
    "token_expired": "expired_token",
}


@attrs.frozen(kw_only=True)
class ClientRegistration:
    """A client registration the provider requires before the device flow (data, not code).

    AWS IAM Identity Center's OIDC API has no clients registered in advance: a client calls
    RegisterClient first and authenticates to StartDeviceAuthorization and CreateToken with the
    ``clientId`` and ``clientSecret`` it got (client_secret_post, in the JSON body).
    ``DeviceFlowClient`` registers once, keeps the registration in its store (shared by every
    process using that store) and registers again shortly before the secret expires.

    - ``endpoint``: the registration endpoint's URL.
    - ``params``: fixed parameters sent with it, e.g. AWS's ``{"clientType": "public"}``.
    - ``name_param``: the parameter carrying the client's name: the ``client_id`` given to
      ``DeviceFlowClient`` (which, for such providers, names the client rather than being one).
    - ``scope_param``: the parameter carrying the client's scopes, or None. When set, the scopes
      are registered here and the device authorization request carries none (AWS ``scopes``).

    The answer is read with the RFC 7591 3.2.1 names ``client_id``, ``client_secret`` and
    ``client_secret_expires_at`` (seconds since the epoch; 0 for never), after the dialect's
    ``response_aliases``.
    """

    endpoint: str
    params: Mapping[str, str] = attrs.field(factory=dict)
    name_param: str = "client_name"
    scope_param: str | None = "scope"


@attrs.frozen(kw_only=True)
class RegisteredClient:
    """The credentials a :class:`ClientRegistration` produced; the secret is hidden from repr."""

    client_id: str
    client_secret: str | None = attrs.field(default=None, repr=False)
    expires_at: datetime | None = attrs.field(default=None, converter=_aware)

    def expires_within(self, seconds: float, *, now: datetime) -> bool:
        """True when the registration ends within ``seconds`` of ``now`` (never without one)."""
        return self.expires_at is not None and self.expires_at - now <= timedelta(seconds=seconds)

    def to_json(self) -> bytes:
        """The registration as compact JSON (secret included: stores encrypt it)."""
        record = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "expires_at": self.expires_at.timestamp() if self.expires_at else None,
        }
        return COMPACT_JSON.encode(record).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RegisteredClient:
        """The inverse of :meth:`to_json`; raises ProtocolError on a malformed record."""
        try:
            record = json.loads(data)
            client_id, secret = record["client_id"], record.get("client_secret")
            if not isinstance(client_id, str) or not isinstance(secret, (str, type(None))):
                raise TypeError("client_id or client_secret is not a string")
            expires = record.get("expires_at")
            return cls(
                client_id=client_id,
                client_secret=secret,
                expires_at=(
                    datetime.fromtimestamp(float(expires), timezone.utc)
                    if expires is not None
                    else None
                ),
            )
        except (TypeError, ValueError, KeyError, OverflowError, OSError, RecursionError) as exc:
            raise ProtocolError(
                f"malformed stored client registration ({type(exc).__name__})"
            ) from None


@attrs.frozen(kw_only=True)
class ProviderMetadata:
    """The endpoints of an authorization server (RFC 8414 2, OpenID Connect Discovery 3)."""

    issuer: str | None
    device_authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen(kw_only=True)
class FlowEvent:
    """One step of a device flow, as yielded by ``DeviceFlowClient.authorize()``.

    ``code`` is set from PENDING on; ``token`` only with GRANTED; ``error`` with EXPIRED, DENIED
    and FAILED; ``interval`` is the polling interval in force (it grows with slow_down).

    ``code_issued`` is true on one event of a flow (none if the flow fails before a code is
    issued): the first PENDING, which brings the code. Show the code (open the browser) on that
    event: PENDING comes again, with the same code, when polling resumes after a ``slow_down``.

    >>> async for event in client.authorize():  # doctest: +SKIP
    ...     if event.code_issued:
    ...         webbrowser.open(event.code.link)
    """

    state: FlowState
    account: str
    code: DeviceCode | None = None
    token: Token | None = None
    error: DeviceFlowError | None = None
    interval: float | None = None
    code_issued: bool = False


class RequestKind(enum.Enum):
    """Which endpoint a request goes to."""

    DISCOVERY = "discovery"
    DEVICE_AUTHORIZATION = "device_authorization"
    TOKEN = "token"
    REVOCATION = "revocation"
    REGISTRATION = "registration"
    JWKS = "jwks"  # the provider's signing keys (OpenID Connect Discovery 3 jwks_uri)


@attrs.frozen(kw_only=True)
class Request:
    """An HTTP request in protocol terms; the transport encodes and authenticates it."""

    kind: RequestKind
    method: Literal["GET", "POST"]
    url: str
    params: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    #: Headers the transport adds to its own (a DPoP proof).
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen(kw_only=True)
class Response:
    """An HTTP response: status, headers, and the (capped) body. ``headers`` has lower-case
    names, or looks names up case-insensitively (aiohttp's own); ``header()`` reads either."""

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = attrs.field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())
