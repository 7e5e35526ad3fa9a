"""Client authentication (RFC 6749 2.3): public clients, client_secret_post and _basic."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

import pytest
from server_wire import get, obtain_tokens, post

from deviceflow.testing import AuthorizationServer
from helpers import DEVICE_GRANT

# Characters that RFC 6749 2.3.1's form-url-encoding must carry through Basic credentials.
ODD_ID = "svc:bot/1 ä"
ODD_SECRET = "p@ss:wörd+%20 /="
CLIENTS = {"public": None, "confidential": "s3cret", ODD_ID: ODD_SECRET}


pytestmark = pytest.mark.authorization_server(clients=CLIENTS)  # it knows three clients


def basic(client_id: str, secret: str) -> dict[str, str]:
    """An Authorization header as RFC 6749 2.3.1 says: form-url-encode, then base64."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


async def test_public_client_needs_no_secret(authorization_server: AuthorizationServer) -> None:
    """A client registered without a secret identifies itself with client_id alone."""
    assert "access_token" in await obtain_tokens(authorization_server, "public")


async def test_client_secret_post(authorization_server: AuthorizationServer) -> None:
    """A confidential client authenticates with client_secret in the body."""
    answer = await post(
        authorization_server.device_authorization_endpoint,
        {"client_id": "confidential", "client_secret": "s3cret"},
        headers={"Authorization": "Bearer unrelated"},  # not a client authentication scheme
    )
    assert 200 == answer.status


@pytest.mark.parametrize(
    ("client_id", "secret"), [("confidential", "s3cret"), (ODD_ID, ODD_SECRET)]
)
async def test_client_secret_basic_with_url_encoded_credentials(
    authorization_server: AuthorizationServer, client_id: str, secret: str
) -> None:
    """Basic credentials are form-url-decoded, so ':' '+' '%' and non-ASCII survive."""
    headers = basic(client_id, secret)
    device = await post(authorization_server.device_authorization_endpoint, {}, headers=headers)
    assert 200 == device.status, device.text
    authorization_server.approve(device.data["user_code"])
    token = await post(
        authorization_server.token_endpoint,
        {
            "grant_type": DEVICE_GRANT,
            "device_code": device.data["device_code"],
        },
        headers=headers,
    )
    assert 200 == token.status


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({"client_id": "confidential"}, {}),
        ({"client_id": "confidential", "client_secret": "wrong"}, {}),
        ({"client_id": "stranger"}, {}),
        ({}, basic("confidential", "wrong")),
        ({}, basic("stranger", "x")),
        ({}, {"Authorization": "Basic !!notbase64!!"}),
        ({}, {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}),
        ({}, {"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()}),
    ],
)
async def test_failed_authentication_is_invalid_client_401(
    authorization_server: AuthorizationServer, form: dict[str, str], headers: dict[str, str]
) -> None:
    """Missing or wrong secrets, unknown clients and bad Basic headers get 401 invalid_client."""
    answer = await post(authorization_server.device_authorization_endpoint, form, headers=headers)
    assert (401, "invalid_client") == (answer.status, answer.error)
    assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({"client_secret": "s3cret"}, basic("confidential", "s3cret")),
        ({"client_id": "public"}, basic("confidential", "s3cret")),
    ],
)
async def test_mixed_authentication_is_invalid_request(
    authorization_server: AuthorizationServer, form: dict[str, str], headers: dict[str, str]
) -> None:
    """RFC 6749 2.3: two methods at once, or a client_id that differs from Basic, are refused."""
    answer = await post(authorization_server.device_authorization_endpoint, form, headers=headers)
    assert (400, "invalid_request") == (answer.status, answer.error)


async def test_token_and_revocation_endpoints_authenticate_too(
    authorization_server: AuthorizationServer,
) -> None:
    """The token and revocation endpoints refuse a confidential client without its secret."""
    token = await post(
        authorization_server.token_endpoint,
        {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "confidential"},
    )
    revoke = await post(
        authorization_server.revocation_endpoint, {"token": "x", "client_id": "confidential"}
    )
    assert (401, 401) == (token.status, revoke.status)


async def test_open_server_takes_basic_as_identification() -> None:
    """With clients=None any client is public, and a Basic header only names it."""
    async with AuthorizationServer() as server:
        answer = await post(
            server.device_authorization_endpoint, {}, headers=basic("anyone", "whatever")
        )
        assert 200 == answer.status
        page = await get(answer.data["verification_uri_complete"])
        assert "<dd>anyone</dd>" in page.text
