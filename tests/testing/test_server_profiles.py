"""Provider profiles: the server bends the protocol the way a given provider does."""

from __future__ import annotations

import re
from typing import Any

import pytest
from server_wire import post

from deviceflow.testing import PROFILES, RFC, AuthorizationServer, Profile, VirtualClock
from helpers import DEVICE_GRANT

GOOGLE_LIKE = Profile(
    name="google-like",
    response_field_names={"verification_uri": "verification_url"},
    error_status={"authorization_pending": 428, "slow_down": 403, "access_denied": 403},
    verification_uri_complete=False,
)
GITHUB_LIKE = Profile(
    name="github-like",
    response_format="negotiate",
    default_error_status=200,
    error_status={"invalid_client": 200},
    error_aliases={"invalid_client": "incorrect_client_credentials"},
    slow_down_includes_interval=True,
    token_type="bearer",
    scope_separator=",",
    discovery=False,
    device_authorization_path="/login/device/code",
    token_path="/login/oauth/access_token",
    verification_path="/login/device",
)
ENTRA_LIKE = Profile(
    name="entra-like",
    error_aliases={"access_denied": "authorization_declined"},
    error_extra={"access_denied": {"error_codes": [70000]}},
    numbers_as_strings=True,
    verification_uri_complete=False,
    message_template="To sign in, open {verification_uri} and enter the code {user_code}.",
    user_code_alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789",
    user_code_groups=(9,),
)
AWS_LIKE = Profile(
    name="aws-like",
    request_format="json",
    request_field_names={
        "client_id": "clientId",
        "client_secret": "clientSecret",
        "device_code": "deviceCode",
        "grant_type": "grantType",
    },
    response_field_names={
        "device_code": "deviceCode",
        "user_code": "userCode",
        "verification_uri": "verificationUri",
        "verification_uri_complete": "verificationUriComplete",
        "expires_in": "expiresIn",
        "access_token": "accessToken",
        "refresh_token": "refreshToken",
        "token_type": "tokenType",
    },
)


def test_default_profile_is_the_rfc() -> None:
    """Profile() is the rfc profile, registered by name."""
    assert Profile() == RFC == PROFILES["rfc"]
    assert "rfc" == RFC.name
    assert (400, 401, 428) == (
        RFC.status_for("invalid_grant"),
        RFC.status_for("invalid_client"),
        GOOGLE_LIKE.status_for("authorization_pending"),
    )


def test_profiles_are_immutable_values() -> None:
    """A profile copies the mappings it is given, and checks its shape."""
    names = {"verification_uri": "verification_url"}
    profile = Profile(response_field_names=names)
    names["user_code"] = "code"
    assert {"verification_uri": "verification_url"} == dict(profile.response_field_names)
    with pytest.raises(ValueError, match="alphabet"):
        Profile(user_code_alphabet="A")
    with pytest.raises(ValueError, match="alphabet"):
        Profile(user_code_alphabet="AB-")
    with pytest.raises(ValueError, match="groups"):
        Profile(user_code_groups=(4, 0))
    with pytest.raises(ValueError, match="paths"):
        Profile(token_path="token")


async def test_google_like_names_and_statuses() -> None:
    """verification_url instead of _uri; pending is 428 and slow_down and denial are 403."""
    clock = VirtualClock()
    async with AuthorizationServer(clock=clock, profile=GOOGLE_LIKE) as server:
        code = (await post(server.device_authorization_endpoint, {"client_id": "c"})).data
        assert {"device_code", "user_code", "verification_url", "expires_in", "interval"} == set(
            code
        )
        form = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"], "client_id": "c"}
        pending = await post(server.token_endpoint, form)
        slow = await post(server.token_endpoint, form)
        clock.advance(10)
        server.deny(code["user_code"])
        denied = await post(server.token_endpoint, form)
    assert [(428, "authorization_pending"), (403, "slow_down"), (403, "access_denied")] == [
        (a.status, a.error) for a in (pending, slow, denied)
    ]


async def test_github_like_form_answers_unless_json_is_accepted() -> None:
    """Form-encoded answers by default, JSON with Accept: application/json; errors are 200."""
    clock = VirtualClock()
    async with AuthorizationServer(clock=clock, profile=GITHUB_LIKE) as server:
        assert server.issuer + "/login/device" == server.verification_uri
        device = await post(
            server.device_authorization_endpoint, {"client_id": "c", "scope": "repo,user"}
        )
        assert "application/x-www-form-urlencoded" == device.content_type
        code = device.data
        assert "5" == code["interval"]
        form = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"], "client_id": "c"}
        json_accept = {"Accept": "application/json"}
        pending = await post(server.token_endpoint, form, headers=json_accept)
        slow = await post(server.token_endpoint, form)
        server.approve(code["user_code"])
        clock.advance(10)
        granted = await post(server.token_endpoint, form, headers=json_accept)
    assert (200, "application/json", "authorization_pending") == (
        pending.status,
        pending.content_type,
        pending.error,
    )
    assert {"error": "slow_down", "interval": "10"} == {
        k: v for k, v in slow.data.items() if k != "error_description"
    }
    assert 200 == slow.status
    assert ("bearer", "repo,user") == (granted.data["token_type"], granted.data["scope"])


async def test_github_like_client_errors_come_with_200_and_their_own_code() -> None:
    """invalid_client is sent as incorrect_client_credentials with HTTP 200."""
    async with AuthorizationServer(profile=GITHUB_LIKE, clients={"c": "s"}) as server:
        answer = await post(server.device_authorization_endpoint, {"client_id": "c"})
    assert (200, "incorrect_client_credentials") == (answer.status, answer.error)


async def test_entra_like_message_strings_and_aliases() -> None:
    """A message, numbers as strings, nine-character codes and authorization_declined."""
    async with AuthorizationServer(clock=VirtualClock(), profile=ENTRA_LIKE) as server:
        code = (await post(server.device_authorization_endpoint, {"client_id": "c"})).data
        assert re.fullmatch(r"[A-HJ-NP-Z2-9]{9}", code["user_code"])
        assert ("600", "5") == (code["expires_in"], code["interval"])
        assert "verification_uri_complete" not in code
        assert (
            f"To sign in, open {server.verification_uri} and enter the code {code['user_code']}."
            == code["message"]
        )
        server.deny(code["user_code"].lower())
        form = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"], "client_id": "c"}
        denied = await post(server.token_endpoint, form)
    assert (400, "authorization_declined", [70000]) == (
        denied.status,
        denied.error,
        denied.data["error_codes"],
    )


async def test_aws_like_json_requests_and_camel_case_answers() -> None:
    """JSON request bodies with camelCase names, and camelCase answers."""
    async with AuthorizationServer(clock=VirtualClock(), profile=AWS_LIKE) as server:
        device = await post(server.device_authorization_endpoint, json_body={"clientId": "c"})
        code = device.data
        server.approve(code["userCode"])
        body: dict[str, Any] = {
            "grantType": DEVICE_GRANT,
            "deviceCode": code["deviceCode"],
            "clientId": "c",
            "scopes": ["a", "b"],
        }
        tokens = await post(server.token_endpoint, json_body=body)
        form = await post(server.token_endpoint, {"clientId": "c"})
        bad_type = await post(server.token_endpoint, json_body={"clientId": 5})
        not_object = await post(server.token_endpoint, json_body=["clientId"])
        not_json = await post(
            server.token_endpoint, b"{", headers={"Content-Type": "application/json"}
        )
        assert [code["deviceCode"]] == [r.form["device_code"] for r in server.requests[1:2]]
        assert [server.requests[1].at] == server.polls(code["deviceCode"])
    assert {"deviceCode", "userCode", "verificationUri", "verificationUriComplete"} <= set(code)
    assert {"accessToken", "refreshToken", "tokenType", "expiresIn"} == set(tokens.data)
    assert [400, 400, 400, 400] == [a.status for a in (form, bad_type, not_object, not_json)]


async def test_expired_token_once_then_invalid_grant() -> None:
    """Auth0-like: expired_token is answered once per code, then invalid_grant."""
    profile = Profile(name="auth0-like", expired_token_once=True)
    async with AuthorizationServer(clock=VirtualClock(), profile=profile) as server:
        code = (await post(server.device_authorization_endpoint, {"client_id": "c"})).data
        server.expire(code["user_code"])
        form = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"], "client_id": "c"}
        errors = [(await post(server.token_endpoint, form)).error for _ in range(2)]
    assert ["expired_token", "invalid_grant"] == errors


async def test_profile_by_name() -> None:
    """AuthorizationServer(profile="rfc") picks the registered profile."""
    async with AuthorizationServer(profile="rfc") as server:
        assert RFC is server.profile
