"""Provider profiles: how the test server bends the protocol, as data.

The default profile, ``rfc``, follows RFC 8628, RFC 6749 and RFC 7009 to the letter. Other
profiles imitate what real providers do (field names, HTTP statuses for errors, error codes, body
formats) so that a client can be tested against each provider's quirks without the provider.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Literal

import attrs

__all__ = [
    "AUTH0",
    "AWS_SSO",
    "DEVOLUTIONS",
    "ENTRA",
    "GITHUB",
    "GOOGLE",
    "KEYCLOAK",
    "OKTA",
    "PROFILES",
    "RFC",
    "Profile",
]


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # A frozen Profile must not change when the caller later mutates the dict it passed in.
    return types.MappingProxyType(dict(value))


def _check_groups(instance: object, attribute: object, value: tuple[int, ...]) -> None:
    if not value or any(group < 1 for group in value):
        raise ValueError("user_code_groups must be a non-empty tuple of positive lengths")


def _check_alphabet(instance: object, attribute: object, value: str) -> None:
    if len(set(value)) < 2 or any(c in "- " or not c.isalnum() for c in value):
        raise ValueError("user_code_alphabet needs at least two distinct letters or digits")


def _check_path(instance: object, attribute: object, value: str | None) -> None:
    if value is not None and (not value.startswith("/") or "?" in value or "#" in value):
        raise ValueError(f"endpoint paths start with '/' and have no query: {value!r}")


@attrs.frozen(kw_only=True)
class Profile:
    """How :class:`~deviceflow.testing.AuthorizationServer` bends the protocol (data, not code).

    ``Profile()`` is the ``rfc`` profile: every field's default is what the RFCs say. A provider
    profile changes only the fields in which that provider differs, for example::

        github_like = Profile(
            name="github-like",
            response_format="negotiate",  # form-encoded unless Accept: application/json
            default_error_status=200,  # errors come with HTTP 200
            error_status={"invalid_client": 200},
            slow_down_includes_interval=True,
            discovery=False,
        )

    Fields:

    - ``name``: shown in logs and reprs.
    - ``response_field_names``: RFC field name -> the provider's name in answers, e.g.
      ``{"verification_uri": "verification_url"}`` (Google) or ``{"access_token": "accessToken"}``
      (AWS SSO OIDC). Applied to every top-level field of every JSON or form answer.
    - ``request_field_names``: RFC parameter name -> the provider's name in requests, e.g.
      ``{"device_code": "deviceCode"}`` (AWS). Requests must use the provider's names.
    - ``request_format``: ``"form"`` (RFC 6749 3.2) or ``"json"`` (AWS SSO OIDC) request bodies.
    - ``response_format``: ``"json"``; ``"form"`` (form-encoded answers); or ``"negotiate"``:
      JSON when the request's ``Accept`` header names ``application/json``, form otherwise
      (GitHub).
    - ``error_status``: RFC error code -> HTTP status, e.g. Google's
      ``{"authorization_pending": 428, "slow_down": 403, "access_denied": 403}``.
    - ``default_error_status``: the status of any other error (RFC 6749 5.2: 400; ``invalid_client``
      is 401 unless ``error_status`` says otherwise).
    - ``error_aliases``: RFC error code -> the code the provider sends instead, e.g. Entra's
      ``{"access_denied": "authorization_declined"}``.
    - ``error_extra``: RFC error code -> extra fields sent with that error (Entra's
      ``error_codes``).
    - ``slow_down_includes_interval``: slow_down answers carry the new ``interval`` (GitHub).
    - ``expired_token_once``: ``expired_token`` is answered once per device code, then
      ``invalid_grant`` (Auth0).
    - ``numbers_as_strings``: ``expires_in`` and ``interval`` are sent as strings.
    - ``verification_uri_complete``: whether the device authorization answer includes it (Entra
      and Google do not).
    - ``message_template``: when set, the device authorization answer includes a ``message``
      made with ``str.format(user_code=..., verification_uri=...)`` (Entra).
    - ``token_type``: the ``token_type`` sent (GitHub sends ``bearer``).
    - ``scope_separator``: how scopes are separated in requests and answers (GitHub: ``,``).
    - ``request_scope_separator``: how scopes are separated in requests, when that differs
      (GitHub takes them space-separated and answers them comma-separated).
    - ``refresh_error_aliases``: like ``error_aliases``, for refresh_token grant answers only
      (GitHub: an unknown device code is ``incorrect_device_code`` but a bad refresh token is
      ``bad_refresh_token``).
    - ``client_secret_required``: token requests without a client secret are answered
      ``invalid_request`` "client_secret is missing." (Google), whatever ``clients`` says.
    - ``metadata_issuer``: the issuer the discovery document names when it is not the server's
      own, a ``str.format`` template with ``{base}`` (``http://127.0.0.1:PORT``) and
      ``{issuer}``: Entra's multi-tenant documents name ``{base}/{{tenantid}}/v2.0``, Auth0's
      ``{issuer}/``.
    - ``registration_path``: where clients register (AWS SSO OIDC RegisterClient:
      ``/client/register``), or None. With it, only registered clients (and those in
      ``clients``) are known; a registration takes ``client_name``, ``client_type`` (only
      ``public``) and ``scope`` (the scopes later codes get when their request names none), and
      answers ``client_id``, ``client_secret``, ``client_id_issued_at`` and
      ``client_secret_expires_at`` (RFC 7591 3.2.1) under the profile's field names; the client
      authenticates with them (client_secret_post) until ``registration_lifetime`` seconds
      have passed.
    - ``user_code_alphabet``, ``user_code_groups``, ``user_code_separator``: the shape of user
      codes. The default is RFC 8628 6.1's base-20 consonant alphabet in two groups of four
      (``WDJB-MJHT``), which has no vowels (no words) and no easily confused characters.
    - ``discovery``: whether the server serves metadata at the well-known paths (GitHub: no).
    - ``id_tokens``: whether token answers carry an id_token when the scope has ``openid``
      (GitHub and AWS: no). ``id_token_issuer`` is the ``iss`` they name when it is not the
      server's issuer, a ``str.format`` template with ``{base}``, ``{issuer}`` and ``{tid}``
      (Entra: ``{base}/{tid}/v2.0``; Google: ``https://accounts.google.com``);
      ``id_token_claims`` are claims added to each (Entra's ``tid``). The signing keys are
      served at ``jwks_path``.
    - ``*_path``: where each endpoint lives below the issuer.
    """

    name: str = "rfc"
    response_field_names: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    request_field_names: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    request_format: Literal["form", "json"] = "form"
    response_format: Literal["json", "form", "negotiate"] = "json"
    error_status: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_mapping)
    default_error_status: int = 400
    error_aliases: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    error_extra: Mapping[str, Mapping[str, Any]] = attrs.field(
        factory=dict, converter=_frozen_mapping
    )
    slow_down_includes_interval: bool = False
    expired_token_once: bool = False
    numbers_as_strings: bool = False
    verification_uri_complete: bool = True
    message_template: str | None = None
    token_type: str = "Bearer"
    scope_separator: str = " "
    request_scope_separator: str | None = None
    refresh_error_aliases: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    client_secret_required: bool = False
    metadata_issuer: str | None = None
    user_code_alphabet: str = attrs.field(default="BCDFGHJKLMNPQRSTVWXZ", validator=_check_alphabet)
    user_code_groups: tuple[int, ...] = attrs.field(default=(4, 4), validator=_check_groups)
    user_code_separator: str = "-"
    discovery: bool = True
    id_tokens: bool = True
    id_token_issuer: str | None = None
    id_token_claims: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    jwks_path: str = attrs.field(default="/jwks", validator=_check_path)
    device_authorization_path: str = attrs.field(
        default="/device_authorization", validator=_check_path
    )
    token_path: str = attrs.field(default="/token", validator=_check_path)
    revocation_path: str = attrs.field(default="/revoke", validator=_check_path)
    verification_path: str = attrs.field(default="/device", validator=_check_path)
    resource_path: str = attrs.field(default="/api/me", validator=_check_path)
    registration_path: str | None = attrs.field(default=None, validator=_check_path)
    registration_lifetime: int = 90 * 24 * 3600

    def status_for(self, error: str) -> int:
        """The HTTP status this profile answers ``error`` (an RFC error code) with."""
        if error in self.error_status:
            return self.error_status[error]
        if error == "invalid_client":
            return 401  # RFC 6749 5.2
        return self.default_error_status


#: The default profile: the RFCs as written.
RFC = Profile()

#: Devolutions Server: RFC 8628 with discovery; the server may live below an instance path
#: (``AuthorizationServer(profile="devolutions", issuer_path="/dvls")``).
DEVOLUTIONS = Profile(name="devolutions")

#: The directory (tenant) id of the people who sign in to the ``entra`` profile (Entra's ``tid``).
ENTRA_TENANT_ID = "0c5a54a2-3f1e-4b6e-9a51-7d2c1e8f4b3a"

#: Microsoft Entra ID (v2.0), as its multi-tenant endpoints (organizations, common) answer: the
#: discovery document names ``{tenantid}`` as its issuer, codes come with a ``message`` and no
#: ``verification_uri_complete``, a denial is ``authorization_declined``, an unknown device code
#: ``bad_verification_code``, and errors carry ``error_codes`` (AADSTS numbers) and trace ids.
#: Run it with ``issuer_path="/organizations/v2.0"``; for a single tenant, evolve it with
#: ``metadata_issuer=None``.
ENTRA = Profile(
    name="entra",
    error_aliases={
        "access_denied": "authorization_declined",
        "invalid_grant": "bad_verification_code",
    },
    refresh_error_aliases={"invalid_grant": "invalid_grant"},
    error_extra={
        code: {"error_codes": [number], "trace_id": "0" * 32, "correlation_id": "1" * 32}
        for code, number in (
            ("authorization_pending", 70016),
            ("slow_down", 70016),
            ("access_denied", 70000),
            ("expired_token", 70019),
            ("invalid_grant", 70000),
        )
    },
    verification_uri_complete=False,
    message_template=(
        "To sign in, use a web browser to open the page {verification_uri} and enter the code "
        "{user_code} to authenticate."
    ),
    user_code_alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789",
    user_code_groups=(9,),
    user_code_separator="",
    metadata_issuer="{base}/{{tenantid}}/v2.0",
    id_token_issuer="{base}/{tid}/v2.0",
    id_token_claims={"tid": ENTRA_TENANT_ID},
    jwks_path="/discovery/v2.0/keys",
    device_authorization_path="/oauth2/v2.0/devicecode",
    token_path="/oauth2/v2.0/token",
)

#: Google ("OAuth 2.0 for TV and Limited-Input Device Applications"): ``verification_url``, no
#: ``verification_uri_complete``, a client secret required at the token endpoint, pending
#: answered 428 and slow_down and denials 403; no discovery of the device endpoint.
GOOGLE = Profile(
    name="google",
    response_field_names={"verification_uri": "verification_url"},
    error_status={"authorization_pending": 428, "slow_down": 403, "access_denied": 403},
    verification_uri_complete=False,
    client_secret_required=True,
    discovery=False,
    id_token_issuer="https://accounts.google.com",
    jwks_path="/oauth2/v3/certs",
    device_authorization_path="/device/code",
)

#: GitHub: no discovery; form-encoded answers unless Accept names JSON; every error with HTTP
#: 200 and GitHub's own codes; slow_down carries the new interval; ``bearer``; scopes asked for
#: space-separated and answered comma-separated.
GITHUB = Profile(
    name="github",
    response_format="negotiate",
    default_error_status=200,
    error_status={"invalid_client": 200},
    error_aliases={
        "invalid_client": "incorrect_client_credentials",
        "invalid_grant": "incorrect_device_code",
    },
    refresh_error_aliases={"invalid_grant": "bad_refresh_token"},
    slow_down_includes_interval=True,
    token_type="bearer",
    scope_separator=",",
    request_scope_separator=" ",
    discovery=False,
    id_tokens=False,
    device_authorization_path="/login/device/code",
    token_path="/login/oauth/access_token",
    verification_path="/login/device",
)

#: Auth0: ``/oauth/device/code``; pending, denials and expiry answered 403, slow_down 429;
#: expired_token once per code, then invalid_grant; the document's issuer ends with "/".
AUTH0 = Profile(
    name="auth0",
    error_status={
        "authorization_pending": 403,
        "slow_down": 429,
        "access_denied": 403,
        "expired_token": 403,
        "invalid_grant": 403,
    },
    expired_token_once=True,
    metadata_issuer="{issuer}/",
    id_token_issuer="{issuer}/",
    jwks_path="/.well-known/jwks.json",
    device_authorization_path="/oauth/device/code",
    token_path="/oauth/token",
    revocation_path="/oauth/revoke",
    verification_path="/activate",
)

#: Okta (org server at the host, custom ones below ``/oauth2/{id}``: use ``issuer_path``):
#: ``/v1/...`` endpoints and eight-letter user codes.
OKTA = Profile(
    name="okta",
    user_code_groups=(8,),
    user_code_separator="",
    device_authorization_path="/v1/device/authorize",
    token_path="/v1/token",
    revocation_path="/v1/revoke",
    verification_path="/activate",
)

#: Keycloak (run with ``issuer_path="/realms/{realm}"``): its protocol paths.
KEYCLOAK = Profile(
    name="keycloak",
    device_authorization_path="/protocol/openid-connect/auth/device",
    token_path="/protocol/openid-connect/token",
    revocation_path="/protocol/openid-connect/revoke",
)

_AWS_NAMES = {
    "client_id": "clientId",
    "client_secret": "clientSecret",
    "client_name": "clientName",
    "client_type": "clientType",
    "device_code": "deviceCode",
    "grant_type": "grantType",
    "refresh_token": "refreshToken",
    "scope": "scopes",
    "start_url": "startUrl",
}

#: AWS IAM Identity Center (SSO OIDC): RegisterClient first, JSON requests and answers with
#: camelCase names, no discovery.
AWS_SSO = Profile(
    name="aws_sso",
    request_format="json",
    request_field_names=_AWS_NAMES,
    response_field_names={
        **{k: v for k, v in _AWS_NAMES.items() if k in ("client_id", "client_secret")},
        "client_id_issued_at": "clientIdIssuedAt",
        "client_secret_expires_at": "clientSecretExpiresAt",
        "device_code": "deviceCode",
        "user_code": "userCode",
        "verification_uri": "verificationUri",
        "verification_uri_complete": "verificationUriComplete",
        "expires_in": "expiresIn",
        "access_token": "accessToken",
        "refresh_token": "refreshToken",
        "token_type": "tokenType",
    },
    discovery=False,
    id_tokens=False,
    registration_path="/client/register",
    device_authorization_path="/device_authorization",
)

#: Profiles by name (``AuthorizationServer(profile="github")``).
PROFILES: Mapping[str, Profile] = types.MappingProxyType(
    {
        profile.name: profile
        for profile in (RFC, DEVOLUTIONS, ENTRA, GOOGLE, GITHUB, AUTH0, OKTA, KEYCLOAK, AWS_SSO)
    }
)
