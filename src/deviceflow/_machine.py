"""The RFC 8628 device flow as a sans-IO state machine.

Theory of operation
-------------------
The machine knows the protocol and nothing else: no sockets, no event loop, no clock. Its driver
(``DeviceFlowClient``) feeds it *inputs* and carries out the *actions* it returns:

- ``start(now, wall)`` begins a flow;
- ``receive_response(response, now, wall)`` hands it an HTTP answer (status, headers, body);
- ``receive_failure(error, now, wall)`` tells it a request failed in transport (connection
  refused, reset, timeout).

Each input returns one action: :class:`Send` (send this request, not before monotonic time
``at``), :class:`Done` (the flow is GRANTED: here is the token) or :class:`Fail` (EXPIRED, DENIED
or FAILED, with a typed error). ``now`` is a monotonic reading used for every wait; ``wall`` is
the current aware UTC time, used only to stamp ``expires_at`` on codes and tokens.

States are :class:`FlowState` values and every move between them is a row of ``TRANSITIONS``
(the docs draw their state diagram from it). Inputs are first classified into an :class:`Event`
by the pure parsing functions below, then the table decides the next state, so no state changes
anywhere else. Any exception inside the machine poisons it: it moves to FAILED, answers with
``Fail`` and refuses every later input. So does any input after a terminal state: there is never a
poll after GRANTED (RFC 8628 3.5; some servers revoke the grant when a redeemed code is polled).

The parsing functions (``parse_body``, ``parse_metadata``, ``parse_token`` ...) are public to the
package: the client uses the same ones for refresh and discovery, so every answer from a server is
judged by one set of rules.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import attrs

from ._models import (
    DEFAULT_ERROR_ALIASES,
    DEFAULT_RESPONSE_ALIASES,
    DeviceCode,
    Dialect,
    FlowState,
    ProviderMetadata,
    RegisteredClient,
    Token,
    is_b64token,
)
from .exceptions import (
    DeviceFlowError,
    DiscoveryError,
    ExpiredTokenError,
    InsecureEndpointError,
    OAuthError,
    ProtocolError,
    TransportError,
    oauth_error_class,
)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

#: RFC 8628 3.2: "If no value is provided, clients MUST use 5 as the default."
DEFAULT_INTERVAL = 5.0
#: RFC 8628 3.5: slow_down adds 5 seconds to the interval, for this and all later polls.
SLOW_DOWN_STEP = 5.0
#: Upper bounds that keep hostile numbers from overflowing datetime arithmetic.
MAX_CODE_LIFETIME = 24 * 3600.0
MAX_TOKEN_LIFETIME = 10 * 365 * 24 * 3600.0
MAX_USER_CODE_LENGTH = 128

_RETRYABLE_STATUSES = frozenset({408, 429})
_RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


class RequestKind(enum.Enum):
    """Which endpoint a request goes to."""

    DISCOVERY = "discovery"
    DEVICE_AUTHORIZATION = "device_authorization"
    TOKEN = "token"
    REVOCATION = "revocation"
    REGISTRATION = "registration"


@attrs.frozen(kw_only=True)
class Request:
    """An HTTP request in protocol terms; the transport encodes and authenticates it."""

    kind: RequestKind
    method: Literal["GET", "POST"]
    url: str
    params: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen(kw_only=True)
class Response:
    """An HTTP response: status, headers with lower-case names, and the (capped) body."""

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = attrs.field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@attrs.frozen
class Send:
    """Send ``request`` once the monotonic clock reads ``at`` or later."""

    request: Request
    at: float


@attrs.frozen
class Done:
    """The flow is GRANTED."""

    token: Token


@attrs.frozen
class Fail:
    """The flow ended in EXPIRED, DENIED or FAILED."""

    error: DeviceFlowError


Action = Send | Done | Fail


class Event(enum.Enum):
    """What an input meant, once classified; the table maps (state, event) to the next state."""

    METADATA = "metadata accepted"
    CODE_ISSUED = "device code issued"
    AUTHORIZATION_PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    TOKEN_ISSUED = "token issued"
    ACCESS_DENIED = "access_denied"
    CODE_EXPIRED = "expired_token or deadline"
    RETRY = "transport failure, 5xx or 429"
    ERROR = "other error"


_S = FlowState
_E = Event
_POLLING = {
    _E.AUTHORIZATION_PENDING: _S.PENDING,
    _E.SLOW_DOWN: _S.SLOW_DOWN,
    _E.TOKEN_ISSUED: _S.GRANTED,
    _E.ACCESS_DENIED: _S.DENIED,
    _E.CODE_EXPIRED: _S.EXPIRED,
    _E.ERROR: _S.FAILED,
}
#: The whole protocol: (state, event) -> next state. A pair not in the table is a bug in the
#: machine and poisons it. Terminal states have no rows: nothing follows them.
TRANSITIONS: Mapping[FlowState, Mapping[Event, FlowState]] = {
    _S.DISCOVER: {_E.METADATA: _S.REQUEST_CODE, _E.RETRY: _S.DISCOVER, _E.ERROR: _S.FAILED},
    _S.REQUEST_CODE: {
        _E.CODE_ISSUED: _S.PENDING,
        _E.RETRY: _S.REQUEST_CODE,
        _E.ERROR: _S.FAILED,
    },
    _S.PENDING: {**_POLLING, _E.RETRY: _S.PENDING},
    _S.SLOW_DOWN: {**_POLLING, _E.RETRY: _S.SLOW_DOWN},
}


# --- URLs ---------------------------------------------------------------------------------------


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` itself and literal loopback IP addresses (127.0.0.0/8, ::1).

    No other name counts, ``*.localhost`` included: whether a name reaches this machine is the
    resolver's answer, and this module does no I/O. RFC 6761 6.3 asks resolvers to keep
    ``.localhost`` names local, but many send them to DNS, where anyone may answer them.
    """
    if not host:
        return False
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure_url(url: object, what: str) -> str:
    """Return ``url`` if it is https (or http to a loopback host); raise otherwise.

    Raises InsecureEndpointError for plain http elsewhere and ProtocolError for anything that is
    not an absolute http(s) URL (``javascript:``, relative paths, ...).
    """
    if not isinstance(url, str) or not url or len(url) > 4096:
        raise ProtocolError(f"{what} is not a usable URL")
    # Not printable: C0 and C1 controls, DEL, bidi and zero-width format characters, Unicode
    # spaces. A link is shown to a person: an escape sequence or a right-to-left override in it
    # could make the terminal show another link than the one opened.
    if " " in url or not url.isprintable():
        raise ProtocolError(f"{what} contains whitespace, control or format characters")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        host = parts.hostname
    except ValueError:
        host = None
    if scheme not in ("https", "http") or not host:
        raise ProtocolError(f"{what} must be an absolute https URL, got scheme {scheme!r}")
    if scheme == "http" and not is_loopback_host(host):
        raise InsecureEndpointError(
            f"{what} {url!r} is plain http; only https is allowed (http only for loopback hosts)"
        )
    return url


def displayable(text: str) -> str:
    """``text`` with every character that is not printable replaced (tabs and newlines by spaces).

    For the server's free text that applications and the CLI show to people (``message``,
    ``error_description``, ``error_uri``, ``scope``): escape sequences in it could rewrite the
    terminal (say, overwrite the verification link shown above it); bidi overrides could
    reverse what is read.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c in "\t\n\r" else "\ufffd" for c in text)


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may live, in the order to try them.

    OpenID Connect Discovery 4: ``/.well-known/openid-configuration`` appended to the issuer.
    RFC 8414 3: ``/.well-known/oauth-authorization-server`` inserted before the issuer's path.
    """
    base = issuer.rstrip("/")
    parts = urllib.parse.urlsplit(base)
    rfc8414 = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + parts.path, "", "")
    )
    return [base + "/.well-known/openid-configuration", rfc8414]


# --- Parsing ------------------------------------------------------------------------------------


class _DuplicateName(ValueError):
    """A JSON object or form body names a field twice (its message is the name, shortened)."""


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A name sent twice is ambiguous: RFC 8259 4 leaves the meaning to each parser, and a proxy
    # or a second parser that keeps the first value would read another answer than ours (say,
    # another issuer or verification_uri). Refuse it rather than pick one.
    fields = dict(pairs)
    if len(fields) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateName(repr(name[:64]))
            seen.add(name)
    return fields


# One decoder for every answer: json.loads(..., object_pairs_hook=...) would build a new one
# (and its scanner) on every call.
_JSON_OBJECTS = json.JSONDecoder(object_pairs_hook=_unique_names)


def _response_aliases(dialect: Dialect | None) -> Mapping[str, str]:
    if dialect is None or not dialect.response_aliases:
        return DEFAULT_RESPONSE_ALIASES
    return {**DEFAULT_RESPONSE_ALIASES, **dialect.response_aliases}


def parse_body(response: Response, dialect: Dialect | None = None) -> dict[str, Any]:
    """Parse a JSON or form-encoded body into a dict with RFC field names.

    Parses whatever the HTTP status (GitHub sends errors with 200, Google with 428 and 403).
    Provider field names are mapped to RFC names (``verification_url`` -> ``verification_uri``);
    unknown fields are kept. Raises ProtocolError for anything else (HTML, a JSON list, ...).
    """
    body = response.body.strip()
    ctype = (response.header("content-type") or "").split(";")[0].strip().lower()
    fields: dict[str, Any]
    if not body:
        fields = {}
    elif ctype.endswith("json") or body[:1] in (b"{", b"["):
        try:
            decoded = _JSON_OBJECTS.decode(body.decode("utf-8"))
        except _DuplicateName as exc:
            raise ProtocolError(
                f"HTTP {response.status}: the body names {exc} more than once"
            ) from None
        except (ValueError, RecursionError):
            raise ProtocolError(f"HTTP {response.status}: body is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise ProtocolError(f"HTTP {response.status}: JSON body is not an object")
        fields = decoded
    elif ctype == "application/x-www-form-urlencoded" or (
        not ctype.startswith("text/html") and b"=" in body and b"<" not in body
    ):
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, max_num_fields=1000
            )
        except ValueError:
            raise ProtocolError(f"HTTP {response.status}: body is not valid form data") from None
        try:
            fields = _unique_names(pairs)
        except _DuplicateName as exc:
            raise ProtocolError(
                f"HTTP {response.status}: the body names {exc} more than once"
            ) from None
    else:
        got = repr(ctype[:64]) if ctype else "an unlabelled body"  # repr: no raw header text
        raise ProtocolError(
            f"HTTP {response.status}: expected a JSON or form-encoded body, got {got}"
        )
    for name, canonical in _response_aliases(dialect).items():
        if name in fields and canonical not in fields:
            fields[canonical] = fields[name]
    return fields


def parse_seconds(value: Any) -> float | None:
    """A non-negative finite number of seconds from a number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None
        if math.isfinite(number) and number >= 0:
            return number
    return None


def parse_interval(value: Any) -> float:
    """RFC 8628 3.2: the polling interval; 5 s when absent, zero or not a number."""
    seconds = parse_seconds(value)
    if seconds is None or seconds == 0:
        return DEFAULT_INTERVAL
    return seconds


def _str_field(fields: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise ProtocolError(f"the server's answer has no {name}")
        return None
    if not isinstance(value, str) or (required and not value):
        raise ProtocolError(f"the server's {name} is not a non-empty string")
    return value


def oauth_error(
    fields: Mapping[str, Any], dialect: Dialect | None, status: int | None
) -> OAuthError | None:
    """The typed OAuthError an error body describes, or None when it has no ``error`` field."""
    raw = fields.get("error")
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw or len(raw) > 256 or not raw.isprintable():
        raise ProtocolError(f"HTTP {status}: the error field is not a short printable string")
    aliases = dict(DEFAULT_ERROR_ALIASES)
    if dialect is not None:
        aliases.update(dialect.error_aliases)
    code = aliases.get(raw, raw)
    description = fields.get("error_description")
    uri = fields.get("error_uri")
    extra = {
        k: v for k, v in fields.items() if k not in ("error", "error_description", "error_uri")
    }
    cls = oauth_error_class(code)
    return cls(
        code,
        displayable(description[:1024]) if isinstance(description, str) else None,
        displayable(uri[:2048]) if isinstance(uri, str) else None,
        status=status,
        server_error=raw,
        extra=extra,
    )


#: The endpoints a Provider may be given by hand, each winning over the discovered one.
ENDPOINT_NAMES = ("device_authorization_endpoint", "token_endpoint", "revocation_endpoint")


def parse_metadata(
    fields: Mapping[str, Any],
    *,
    expected_issuer: str | None,
    check_issuer: bool = True,
    given: Mapping[str, str] | None = None,
) -> ProviderMetadata:
    """Validate a discovery document (OpenID Connect Discovery 4.3, RFC 8414 3.3).

    The document's ``issuer`` must be identical to the one asked for, or it is not used
    (``check_issuer=False`` is the explicit opt-out). ``given`` holds the endpoints the Provider
    was given by hand (see :data:`ENDPOINT_NAMES`): they win over the document's, which only
    fills in the rest. Raises DiscoveryError naming what is wrong or missing.
    """
    issuer = fields.get("issuer")
    if check_issuer:
        if not isinstance(issuer, str) or issuer != expected_issuer:
            raise DiscoveryError(
                f"the discovery document's issuer {issuer!r} is not the issuer asked for "
                f"({expected_issuer!r}); refusing to use it (OpenID Connect Discovery 4.3, "
                "RFC 8414 3.3). Pass check_issuer=False only if you trust this server."
            )
    elif issuer is not None and not isinstance(issuer, str):
        raise DiscoveryError("the discovery document's issuer is not a string")
    given = given or {}
    endpoints: dict[str, str | None] = {}
    for name in ENDPOINT_NAMES:
        value = fields.get(name)
        if name in given:
            endpoints[name] = given[name]
        elif isinstance(value, str) and value:
            endpoints[name] = _discovered_url(value, name)
        elif name == "revocation_endpoint":
            endpoints[name] = None  # optional (RFC 7009); a malformed one is dropped
        else:
            raise DiscoveryError(
                f"the discovery document of {expected_issuer!r} has no {name}. If the server "
                "has one (some offer the device flow without listing it, as django-oauth-toolkit "
                f"does), give it to the Provider: Provider(issuer=..., {name}=...) or "
                f"Provider.discover(issuer, {name}=...); the rest is still discovered."
            )
    device, token = endpoints["device_authorization_endpoint"], endpoints["token_endpoint"]
    assert device is not None
    assert token is not None
    return ProviderMetadata(
        issuer=issuer if isinstance(issuer, str) else expected_issuer,
        device_authorization_endpoint=device,
        token_endpoint=token,
        revocation_endpoint=endpoints["revocation_endpoint"],
        extra=dict(fields),
    )


def _discovered_url(value: str, name: str) -> str:
    try:
        return require_secure_url(value, name)
    except InsecureEndpointError:
        raise
    except ProtocolError as exc:
        raise DiscoveryError(str(exc)) from None


def parse_device_code(fields: Mapping[str, Any], wall: datetime) -> DeviceCode:
    """RFC 8628 3.2: validate a device authorization response."""
    device_code = _str_field(fields, "device_code", required=True)
    user_code = _str_field(fields, "user_code", required=True)
    uri = _str_field(fields, "verification_uri", required=True)
    complete = _str_field(fields, "verification_uri_complete", required=False)
    assert device_code is not None
    assert user_code is not None
    assert uri is not None
    if len(user_code) > MAX_USER_CODE_LENGTH or not user_code.isprintable():
        raise ProtocolError("the server's user_code is too long or not printable")
    require_secure_url(uri, "verification_uri")
    if complete is not None:
        require_secure_url(complete, "verification_uri_complete")
    if "expires_in" not in fields:
        raise ProtocolError("the server's answer has no expires_in")
    expires_in = parse_seconds(fields["expires_in"])
    if expires_in is None or expires_in == 0:
        raise ProtocolError("the server's expires_in is not a positive number of seconds")
    message = fields.get("message")
    known = {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
        "message",
    }
    return DeviceCode(
        device_code=device_code,
        user_code=user_code,
        verification_uri=uri,
        verification_uri_complete=complete,
        expires_at=wall + timedelta(seconds=min(expires_in, MAX_CODE_LIFETIME)),
        interval=parse_interval(fields.get("interval")),
        message=displayable(message) if isinstance(message, str) else None,
        extra={k: v for k, v in fields.items() if k not in known},
    )


def parse_token(
    fields: Mapping[str, Any], wall: datetime, *, previous: Token | None = None
) -> Token:
    """RFC 6749 5.1: validate a successful token response.

    With ``previous`` (a refresh, RFC 6749 6), a missing refresh_token or scope keeps the old one.
    """
    access_token = _str_field(fields, "access_token", required=True)
    token_type = _str_field(fields, "token_type", required=True)
    assert access_token is not None
    assert token_type is not None
    # RFC 6749 7.1: the client must not use a token whose type it does not understand.
    if token_type.lower() != "bearer":
        raise ProtocolError(
            f"the server issued a token of type {token_type[:32]!r}; only Bearer is supported"
        )
    # A refresh gives a token of the grant's type (RFC 9449 5: a DPoP grant stays DPoP).
    if previous is not None and previous.token_type.lower() != token_type.lower():
        raise ProtocolError(
            f"the refresh answered a token of type {token_type[:32]!r} for a grant of "
            f"{previous.token_type[:32]!r} tokens"
        )
    # RFC 6750 2.1 (and RFC 9449 7.1): the token goes into an Authorization header as a
    # b64token. Anything else (CR LF, NUL, spaces) could inject headers into an HTTP stack
    # that does not refuse them; it is not passed on.
    if not is_b64token(access_token):
        raise ProtocolError(
            "the server's access_token is not an RFC 6750 b64token (letters, digits and "
            "-._~+/ with trailing '=')"
        )
    expires_at = None
    if fields.get("expires_in") is not None:
        expires_in = parse_seconds(fields["expires_in"])
        if expires_in is None:
            raise ProtocolError("the server's expires_in is not a non-negative number")
        expires_at = wall + timedelta(seconds=min(expires_in, MAX_TOKEN_LIFETIME))
    refresh_token = _str_field(fields, "refresh_token", required=False)
    scope = fields.get("scope")
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        scope = " ".join(scope)
    elif scope is not None and not isinstance(scope, str):
        raise ProtocolError("the server's scope is not a string")
    if scope is not None:
        scope = displayable(scope)
    id_token = _str_field(fields, "id_token", required=False)
    if previous is not None:
        refresh_token = refresh_token or previous.refresh_token
        scope = scope if scope is not None else previous.scope
        id_token = id_token or previous.id_token
    return Token(
        access_token=access_token,
        token_type="Bearer",
        expires_at=expires_at,
        refresh_token=refresh_token or None,
        scope=scope,
        id_token=id_token,
        extra={k: v for k, v in fields.items() if k not in _TOKEN_FIELDS},
    )


_TOKEN_FIELDS = frozenset(
    {"access_token", "token_type", "expires_in", "refresh_token", "scope", "id_token"}
)


def retry_after(response: Response, wall: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), else None."""
    value = response.header("retry-after")
    if not value:
        return None
    seconds = parse_seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - wall).total_seconds())


def is_retryable_status(status: int) -> bool:
    """5xx, 429 and 408 are worth another try later (RFC 8628 3.5 asks for backoff)."""
    return status >= 500 or status in _RETRYABLE_STATUSES


def interpret_token_response(
    response: Response, dialect: Dialect | None, wall: datetime, *, previous: Token | None
) -> Token:
    """A refresh (or any token endpoint answer outside polling): a Token or a typed error.

    Retryable answers (5xx, 429, ``temporarily_unavailable``) raise TransportError with
    ``retryable=True`` so the caller's backoff loop can tell them apart.
    """
    try:
        fields = parse_body(response, dialect)
    except ProtocolError:
        if is_retryable_status(response.status):
            raise TransportError(
                f"the token endpoint answered HTTP {response.status}", retryable=True
            ) from None
        raise
    error = oauth_error(fields, dialect, response.status)
    if error is not None:
        # slow_down outside polling asks for the same as a 503: try again later (the refresh
        # token was not used, so a retry is safe); as fatal it would surface to callers.
        if error.error in _RETRYABLE_ERRORS or error.error == "slow_down":
            raise TransportError(f"the token endpoint is unavailable ({error})", retryable=True)
        raise error
    if is_retryable_status(response.status):
        raise TransportError(f"the token endpoint answered HTTP {response.status}")
    if not 200 <= response.status < 300:
        raise ProtocolError(f"the token endpoint answered HTTP {response.status} without an error")
    return parse_token(fields, wall, previous=previous)


def interpret_registration_response(
    response: Response, dialect: Dialect | None, wall: datetime
) -> RegisteredClient:
    """A client registration answer (RFC 7591 3.2, AWS RegisterClient): credentials or an error.

    Retryable answers raise TransportError with ``retryable=True``, as for refreshes.
    """
    what = "the registration endpoint"
    try:
        fields = parse_body(response, dialect)
    except ProtocolError:
        if is_retryable_status(response.status):
            raise TransportError(f"{what} answered HTTP {response.status}") from None
        raise
    error = oauth_error(fields, dialect, response.status)
    if error is not None:
        if error.error in _RETRYABLE_ERRORS:
            raise TransportError(f"{what} is unavailable ({error})")
        raise error
    if is_retryable_status(response.status):
        raise TransportError(f"{what} answered HTTP {response.status}")
    if not 200 <= response.status < 300:
        raise ProtocolError(f"{what} answered HTTP {response.status} without an error")
    client_id = _str_field(fields, "client_id", required=True)
    assert client_id is not None
    secret = _str_field(fields, "client_secret", required=False)
    # RFC 7591 3.2.1: seconds since the epoch; 0 means the secret does not expire.
    expires = parse_seconds(fields.get("client_secret_expires_at"))
    expires_at = None
    if expires:
        try:
            expires_at = datetime.fromtimestamp(expires, wall.tzinfo)
        except (OverflowError, OSError, ValueError):
            raise ProtocolError(f"{what} sent an unusable client_secret_expires_at") from None
    return RegisteredClient(client_id=client_id, client_secret=secret, expires_at=expires_at)


# --- The machine --------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class _Classified:
    event: Event
    error: DeviceFlowError | None = None
    delay: float | None = None
    fields: Mapping[str, Any] = attrs.Factory(dict)


class DeviceFlowMachine:
    """One device flow, from discovery (when needed) to a token or a typed error.

    >>> from datetime import datetime, timezone
    >>> m = DeviceFlowMachine(client_id="cli", scope="openid", metadata=ProviderMetadata(
    ...     issuer=None, device_authorization_endpoint="https://idp.example/device",
    ...     token_endpoint="https://idp.example/token"))
    >>> action = m.start(now=0.0, wall=datetime(2030, 1, 1, tzinfo=timezone.utc))
    >>> action.request.url, m.state
    ('https://idp.example/device', <FlowState.REQUEST_CODE: 'request_code'>)
    """

    def __init__(
        self,
        *,
        client_id: str,
        scope: str | None = None,
        metadata: ProviderMetadata | None = None,
        issuer: str | None = None,
        expected_issuer: str | None = None,
        check_issuer: bool = True,
        dialect: Dialect | None = None,
        device_params: Mapping[str, str] | None = None,
        poll_margin: float = 0.1,
        max_backoff: float = 60.0,
        setup_timeout: float = 60.0,
        endpoints: Mapping[str, str] | None = None,
    ) -> None:
        if metadata is None and issuer is None:
            raise ValueError("give the provider's metadata or an issuer to discover")
        # Endpoints given by hand: discovery fills in only the others (Provider.endpoints).
        self._given = {k: v for k, v in (endpoints or {}).items() if k in ENDPOINT_NAMES}
        self._client_id = client_id
        self._scope = scope
        self._dialect = dialect or Dialect()
        self._device_params = dict(device_params or {})
        self._issuer = issuer
        self._expected_issuer = expected_issuer if expected_issuer is not None else issuer
        self._check_issuer = check_issuer
        self._poll_margin = max(0.0, poll_margin)
        self._max_backoff = max_backoff
        self._setup_timeout = setup_timeout
        self._discovery_urls = discovery_urls(issuer) if issuer else []

        self.metadata = metadata
        self.state = FlowState.REQUEST_CODE if metadata is not None else FlowState.DISCOVER
        self.code: DeviceCode | None = None
        self.token: Token | None = None
        self.error: DeviceFlowError | None = None
        #: The polling interval in force (seconds); grows with every slow_down, never shrinks.
        self.interval = DEFAULT_INTERVAL
        self._failures = 0
        self._deadline = math.inf
        self._setup_deadline = math.inf
        self._started = False
        self._discovery_index = 0

    # Inputs ---------------------------------------------------------------------------------

    def start(self, *, now: float, wall: datetime) -> Action:
        """Begin the flow: the first request to send."""
        if self._started:
            return self._refuse()
        self._started = True
        return self._guard(lambda: self._begin(now))

    def receive_response(self, response: Response, *, now: float, wall: datetime) -> Action:
        """Feed the answer to the last Send; returns the next action."""
        if not self._started or self.state.is_terminal:
            return self._refuse()
        return self._guard(lambda: self._step(self._classify(response, wall), now, wall))

    def receive_failure(self, error: DeviceFlowError, *, now: float, wall: datetime) -> Action:
        """The last Send failed before an answer could be used.

        A retryable TransportError (connection refused, reset, timeout) is retried with backoff;
        anything else (a TLS failure, an oversized body, an insecure URL) ends the flow.
        """
        if not self._started or self.state.is_terminal:
            return self._refuse()
        retry = isinstance(error, TransportError) and error.retryable
        event = Event.RETRY if retry else Event.ERROR
        return self._guard(lambda: self._step(_Classified(event=event, error=error), now, wall))

    # Internals ------------------------------------------------------------------------------

    def _refuse(self) -> Action:
        raise ProtocolError(
            f"this device flow is {self.state.value}; it takes no more input (start a new flow)"
        )

    def _guard(self, step: Callable[[], Action]) -> Action:
        try:
            return step()
        except Exception as exc:
            # Any exception poisons the machine: it is FAILED and refuses further input.
            error = (
                exc
                if isinstance(exc, DeviceFlowError)
                else ProtocolError(f"internal error in the device flow ({type(exc).__name__})")
            )
            self.state = FlowState.FAILED
            self.error = error
            return Fail(error)

    def _begin(self, now: float) -> Action:
        self._setup_deadline = now + self._setup_timeout
        return Send(self._request_for_state(), now)

    def _request_for_state(self) -> Request:
        if self.state is FlowState.DISCOVER:
            return Request(
                kind=RequestKind.DISCOVERY,
                method="GET",
                url=self._discovery_urls[self._discovery_index],
            )
        assert self.metadata is not None
        if self.state is FlowState.REQUEST_CODE:
            params = {"client_id": self._client_id, **self._device_params}
            if self._scope:
                params["scope"] = self._dialect.scope_separator.join(self._scope.split())
            return Request(
                kind=RequestKind.DEVICE_AUTHORIZATION,
                method="POST",
                url=self.metadata.device_authorization_endpoint,
                params=params,
            )
        assert self.code is not None
        # RFC 8628 3.4: the device access token request.
        return Request(
            kind=RequestKind.TOKEN,
            method="POST",
            url=self.metadata.token_endpoint,
            params={
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": self.code.device_code,
                "client_id": self._client_id,
            },
        )

    def _classify(self, response: Response, wall: datetime) -> _Classified:
        """Turn an HTTP response into an Event (the only place that reads responses)."""
        status = response.status
        if self.state is FlowState.DISCOVER and status == 404:
            if self._discovery_index + 1 < len(self._discovery_urls):
                self._discovery_index += 1
                return _Classified(event=Event.RETRY, delay=0.0)
            return _Classified(
                event=Event.ERROR,
                error=DiscoveryError(
                    f"no discovery document for issuer {self._issuer!r} (tried "
                    + ", ".join(self._discovery_urls)
                    + ")"
                ),
            )
        if 300 <= status < 400:
            return _Classified(
                event=Event.ERROR,
                error=ProtocolError(f"HTTP {status}: redirects are not followed"),
            )
        try:
            fields = parse_body(response, self._dialect)
        except ProtocolError as exc:
            if is_retryable_status(status):
                return self._retry(response, wall, TransportError(f"HTTP {status}"))
            if self.state is FlowState.DISCOVER:
                raise DiscoveryError(f"the discovery document is unusable: {exc}") from None
            raise
        if self.state is FlowState.DISCOVER:
            return self._classify_discovery(response, fields, wall)
        error = oauth_error(fields, self._dialect, status)
        if error is not None:
            return self._classify_error(error, response, fields, wall)
        if is_retryable_status(status):
            return self._retry(response, wall, TransportError(f"HTTP {status}"))
        if not 200 <= status < 300:
            raise ProtocolError(f"HTTP {status} without an OAuth error")
        if self.state is FlowState.REQUEST_CODE:
            return _Classified(event=Event.CODE_ISSUED, fields=fields)
        return _Classified(event=Event.TOKEN_ISSUED, fields=fields)

    def _classify_discovery(
        self, response: Response, fields: Mapping[str, Any], wall: datetime
    ) -> _Classified:
        if is_retryable_status(response.status):
            return self._retry(response, wall, TransportError(f"HTTP {response.status}"))
        if response.status != 200:
            raise DiscoveryError(f"discovery answered HTTP {response.status}")
        self.metadata = parse_metadata(
            fields,
            expected_issuer=self._expected_issuer,
            check_issuer=self._check_issuer,
            given=self._given,
        )
        return _Classified(event=Event.METADATA)

    def _classify_error(
        self,
        error: OAuthError,
        response: Response,
        fields: Mapping[str, Any],
        wall: datetime,
    ) -> _Classified:
        code = error.error
        if code in _RETRYABLE_ERRORS:
            return self._retry(response, wall, error)
        polling = self.state in (FlowState.PENDING, FlowState.SLOW_DOWN)
        if polling and code == "authorization_pending":
            return _Classified(event=Event.AUTHORIZATION_PENDING, fields=fields)
        if polling and code == "slow_down":
            return _Classified(event=Event.SLOW_DOWN, fields=fields)
        if polling and code == "access_denied":
            return _Classified(event=Event.ACCESS_DENIED, error=error)
        if polling and code == "expired_token":
            return _Classified(event=Event.CODE_EXPIRED, error=error)
        if not polling and code == "slow_down":
            return self._retry(response, wall, error)
        return _Classified(event=Event.ERROR, error=error)

    def _retry(self, response: Response, wall: datetime, error: DeviceFlowError) -> _Classified:
        return _Classified(event=Event.RETRY, error=error, delay=retry_after(response, wall))

    def _step(self, classified: _Classified, now: float, wall: datetime) -> Action:
        event = classified.event
        try:
            next_state = TRANSITIONS[self.state][event]
        except KeyError:
            raise ProtocolError(f"no transition from {self.state} on {event}") from None
        if event is Event.RETRY:
            return self._after_retry(classified, next_state, now)
        self._failures = 0
        if event is Event.METADATA:
            self.state = next_state
            return Send(self._request_for_state(), now)
        if event is Event.CODE_ISSUED:
            self.code = parse_device_code(classified.fields, wall)
            self.interval = self.code.interval
            lifetime = (self.code.expires_at - wall).total_seconds()
            self._deadline = now + lifetime
            self.state = next_state
            return self._schedule_poll(now + self.interval)
        if event is Event.TOKEN_ISSUED:
            self.token = parse_token(classified.fields, wall)
            self.state = next_state
            return Done(self.token)
        if event is Event.AUTHORIZATION_PENDING:
            self._adopt_server_interval(classified.fields)
            self.state = next_state
            return self._schedule_poll(now + self.interval)
        if event is Event.SLOW_DOWN:
            # RFC 8628 3.5: add 5 s for this and all later polls; a larger interval sent by the
            # server (GitHub) wins.
            self.interval += SLOW_DOWN_STEP
            self._adopt_server_interval(classified.fields)
            self.state = next_state
            return self._schedule_poll(now + self.interval)
        assert classified.error is not None
        self.state = next_state
        self.error = classified.error
        return Fail(classified.error)

    def _adopt_server_interval(self, fields: Mapping[str, Any]) -> None:
        server_interval = parse_seconds(fields.get("interval"))
        if server_interval is not None and server_interval > self.interval:
            self.interval = server_interval

    def _after_retry(self, classified: _Classified, next_state: FlowState, now: float) -> Action:
        self._failures += 1
        polling = next_state in (FlowState.PENDING, FlowState.SLOW_DOWN)
        if polling:
            # RFC 8628 3.5: on a connection failure the client MUST slow down before retrying;
            # doubling the interval on each one is RECOMMENDED. Never below the interval.
            base = self.interval
            backoff = min(self._max_backoff, base * 2**self._failures)
            delay = max(base, backoff)
        elif classified.delay == 0.0 and classified.error is None:
            delay = 0.0  # the next discovery URL, not a failure
            self._failures -= 1
        else:
            delay = min(self._max_backoff, 0.5 * 2 ** (self._failures - 1))
        if classified.delay is not None:
            delay = max(delay, classified.delay)
        self.state = next_state
        if polling:
            return self._schedule_poll(now + delay, cause=classified.error)
        if now + delay > self._setup_deadline:
            error = classified.error or ProtocolError("the server did not answer usefully")
            if not isinstance(error, (OAuthError, DiscoveryError)):
                error = TransportError(
                    f"gave up after {self._failures} failed attempts: {error}", retryable=False
                )
            return self._fail(error)
        return Send(self._request_for_state(), now + delay)

    def _schedule_poll(self, at: float, *, cause: DeviceFlowError | None = None) -> Action:
        at += self._poll_margin
        if at > self._deadline:
            # The device code dies before the next poll is allowed: stop now (RFC 8628 3.5).
            why = f"; last error: {cause}" if cause is not None else ""
            self.state = TRANSITIONS[self.state][Event.CODE_EXPIRED]
            return self._fail(
                ExpiredTokenError(
                    "expired_token",
                    "the device code expired before the user approved it" + why,
                )
            )
        return Send(self._request_for_state(), at)

    def _fail(self, error: DeviceFlowError) -> Fail:
        if not self.state.is_terminal:
            self.state = TRANSITIONS[self.state][Event.ERROR]
        self.error = error
        return Fail(error)
