"""Parsers of what servers send: bodies, errors, discovery documents, device codes, tokens and
client registrations, judged by one set of rules wherever they arrive (a poll, a refresh,
discovery).

Every function is pure. Anything a server can send either parses into a value type of
``_models`` or raises a typed error: ProtocolError (malformed), DiscoveryError, an OAuthError
subclass, or a retryable TransportError (5xx, 429, ``temporarily_unavailable``).
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ._models import (
    DEFAULT_ERROR_ALIASES,
    DEFAULT_RESPONSE_ALIASES,
    DeviceCode,
    Dialect,
    ProviderMetadata,
    RegisteredClient,
    Response,
    Token,
    is_b64token,
)
from ._urls import displayable, require_secure_url
from .exceptions import (
    DiscoveryError,
    InsecureEndpointError,
    OAuthError,
    ProtocolError,
    TransportError,
    oauth_error_class,
)

#: RFC 8628 3.2: "If no value is provided, clients MUST use 5 as the default."
DEFAULT_INTERVAL = 5.0
#: Upper bounds that keep hostile numbers from overflowing datetime arithmetic.
MAX_CODE_LIFETIME = 24 * 3600.0
MAX_TOKEN_LIFETIME = 10 * 365 * 24 * 3600.0
MAX_USER_CODE_LENGTH = 128

_RETRYABLE_STATUSES = frozenset({408, 429})
#: OAuth error codes that mean "try again later", not "no".
RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


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
    # Whether a DPoP token (RFC 9449) was asked for is checked where the proof was sent.
    kind = _TOKEN_TYPES.get(token_type.lower())
    if kind is None:
        raise ProtocolError(
            f"the server issued a token of type {token_type[:32]!r}; only Bearer and DPoP "
            "are supported"
        )
    # Whether a refresh gave a token of the grant's type is checked by the refresh
    # (check_token_type): a mismatch must not lose the rotated refresh token read below.
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
        token_type=kind,
        expires_at=expires_at,
        refresh_token=refresh_token or None,
        scope=scope,
        id_token=id_token,
        extra={k: v for k, v in fields.items() if k not in _TOKEN_FIELDS},
    )


#: The token types a client can use, by their lower-case name (RFC 6749 7.1: case-insensitive).
_TOKEN_TYPES = {"bearer": "Bearer", "dpop": "DPoP"}
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
    from email.utils import parsedate_to_datetime  # rare: imported when first needed

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
        if error.error in RETRYABLE_ERRORS or error.error == "slow_down":
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
        if error.error in RETRYABLE_ERRORS:
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
