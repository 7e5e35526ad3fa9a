"""Property: whatever mix of provider quirks a server shows, a flow ends in a Token or a typed
DeviceFlowError; and when the client's dialect knows the quirks, in the right one."""

from __future__ import annotations

from typing import Any, Literal

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceflow import (
    AccessDeniedError,
    DeviceCode,
    DeviceFlowClient,
    DeviceFlowError,
    Dialect,
    ExpiredTokenError,
    Provider,
    Token,
)
from deviceflow.testing import AuthorizationServer, Profile, VirtualClock

#: RFC name -> a name some provider answers with.
RESPONSE_RENAMES = {
    "verification_uri": "verification_url",
    "verification_uri_complete": "verificationUriComplete",
    "device_code": "deviceCode",
    "user_code": "userCode",
    "expires_in": "expiresIn",
    "access_token": "accessToken",
    "refresh_token": "refreshToken",
    "token_type": "tokenType",
}
#: RFC name -> a name some provider takes in requests.
REQUEST_RENAMES = {
    "client_id": "clientId",
    "device_code": "deviceCode",
    "grant_type": "grantType",
    "refresh_token": "refreshToken",
}
#: RFC error -> a code some provider sends instead.
ERROR_ALIASES = {
    "access_denied": "authorization_declined",
    "expired_token": "code_expired",
    "invalid_grant": "bad_verification_code",
    "invalid_client": "incorrect_client_credentials",
}
ERRORS = ["authorization_pending", "slow_down", "access_denied", "expired_token", "invalid_grant"]
STATUSES = st.sampled_from([200, 400, 401, 403, 428, 429])
Outcome = Literal["approve", "deny", "expire", "slow_down"]
FORMATS: list[Literal["form", "json"]] = ["form", "json"]


@attrs.frozen
class Mix:
    profile: Profile
    dialect: Dialect
    knows_quirks: bool


@st.composite
def mixes(draw: st.DrawFn) -> Mix:
    answers = draw(st.sets(st.sampled_from(sorted(RESPONSE_RENAMES))))
    requests = draw(st.sets(st.sampled_from(sorted(REQUEST_RENAMES))))
    errors = draw(st.sets(st.sampled_from(sorted(ERROR_ALIASES))))
    request_format = draw(st.sampled_from(FORMATS))
    profile = Profile(
        name="mix",
        response_field_names={name: RESPONSE_RENAMES[name] for name in answers},
        request_field_names={name: REQUEST_RENAMES[name] for name in requests},
        request_format=request_format,
        response_format=draw(st.sampled_from(["json", "form", "negotiate"])),
        error_status=draw(st.dictionaries(st.sampled_from(ERRORS), STATUSES)),
        default_error_status=draw(st.sampled_from([200, 400, 403])),
        error_aliases={name: ERROR_ALIASES[name] for name in errors},
        slow_down_includes_interval=draw(st.booleans()),
        expired_token_once=draw(st.booleans()),
        numbers_as_strings=draw(st.booleans()),
        verification_uri_complete=draw(st.booleans()),
        message_template=draw(st.sampled_from([None, "Open {verification_uri}: {user_code}"])),
        token_type=draw(st.sampled_from(["Bearer", "bearer", "BEARER"])),
    )
    knows = draw(st.booleans())
    dialect = Dialect(
        response_aliases={RESPONSE_RENAMES[name]: name for name in answers} if knows else {},
        request_names={name: REQUEST_RENAMES[name] for name in requests} if knows else {},
        error_aliases={ERROR_ALIASES[name]: name for name in errors} if knows else {},
        request_format=request_format if knows else "form",
    )
    return Mix(profile=profile, dialect=dialect, knows_quirks=knows)


async def run(mix: Mix, outcome: Outcome) -> tuple[Token | DeviceFlowError, Any]:
    """One flow (and, once granted, one refresh) against a server showing ``mix``."""
    clock = VirtualClock()
    async with AuthorizationServer(
        clock=clock, profile=mix.profile, auto_approve_after=2, interval="5"
    ) as server:
        actions = {
            "approve": server.approve,
            "deny": server.deny,
            "expire": server.expire,
            "slow_down": server.slow_down,
        }

        def on_code(code: DeviceCode, account: str) -> None:
            actions[outcome](code.user_code)

        provider = Provider(
            device_authorization_endpoint=server.device_authorization_endpoint,
            token_endpoint=server.token_endpoint,
            dialect=mix.dialect,
        )
        client = DeviceFlowClient(provider, client_id="mix", clock=clock, on_code=on_code)
        async with client:
            try:
                await client.get_token()
                result: Token | DeviceFlowError = await client.refresh()
            except DeviceFlowError as exc:
                result = exc
    return result, server


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mix=mixes(), outcome=st.sampled_from(["approve", "deny", "expire", "slow_down"]))
async def test_any_quirk_mix_ends_in_a_token_or_a_typed_error(mix: Mix, outcome: Outcome) -> None:
    """Any mix of quirks yields a Token or a DeviceFlowError subclass, the right one if known."""
    result, server = await run(mix, outcome)
    assert isinstance(result, (Token, DeviceFlowError))
    assert type(result) is not DeviceFlowError
    if mix.knows_quirks:
        expected = {
            "approve": Token,
            "slow_down": Token,
            "deny": AccessDeniedError,
            "expire": ExpiredTokenError,
        }[outcome]
        assert expected is type(result), repr(result)
        if isinstance(result, Token):
            assert server.is_valid_access_token(result.access_token)
