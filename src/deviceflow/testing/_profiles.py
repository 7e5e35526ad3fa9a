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

__all__ = ["PROFILES", "RFC", "Profile"]


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # A frozen Profile must not change when the caller later mutates the dict it passed in.
    return types.MappingProxyType(dict(value))


def _check_groups(instance: object, attribute: object, value: tuple[int, ...]) -> None:
    if not value or any(group < 1 for group in value):
        raise ValueError("user_code_groups must be a non-empty tuple of positive lengths")


def _check_alphabet(instance: object, attribute: object, value: str) -> None:
    if len(set(value)) < 2 or any(c in "- " or not c.isalnum() for c in value):
        raise ValueError("user_code_alphabet needs at least two distinct letters or digits")


def _check_path(instance: object, attribute: object, value: str) -> None:
    if not value.startswith("/") or "?" in value or "#" in value:
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
    - ``user_code_alphabet``, ``user_code_groups``, ``user_code_separator``: the shape of user
      codes. The default is RFC 8628 6.1's base-20 consonant alphabet in two groups of four
      (``WDJB-MJHT``), which has no vowels (no words) and no easily confused characters.
    - ``discovery``: whether the server serves metadata at the well-known paths (GitHub: no).
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
    user_code_alphabet: str = attrs.field(default="BCDFGHJKLMNPQRSTVWXZ", validator=_check_alphabet)
    user_code_groups: tuple[int, ...] = attrs.field(default=(4, 4), validator=_check_groups)
    user_code_separator: str = "-"
    discovery: bool = True
    device_authorization_path: str = attrs.field(
        default="/device_authorization", validator=_check_path
    )
    token_path: str = attrs.field(default="/token", validator=_check_path)
    revocation_path: str = attrs.field(default="/revoke", validator=_check_path)
    verification_path: str = attrs.field(default="/device", validator=_check_path)
    resource_path: str = attrs.field(default="/api/me", validator=_check_path)

    def status_for(self, error: str) -> int:
        """The HTTP status this profile answers ``error`` (an RFC error code) with."""
        if error in self.error_status:
            return self.error_status[error]
        if error == "invalid_client":
            return 401  # RFC 6749 5.2
        return self.default_error_status


#: The default profile: the RFCs as written.
RFC = Profile()

#: Profiles by name (``AuthorizationServer(profile="rfc")``).
PROFILES: Mapping[str, Profile] = types.MappingProxyType({RFC.name: RFC})
