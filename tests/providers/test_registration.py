"""Client registration (AWS RegisterClient): reading answers and stored registrations."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from provider_cases import CASES, deciding

from deviceflow import Dialect, OAuthError, ProtocolError, Response, TransportError
from deviceflow._models import RegisteredClient
from deviceflow._parse import interpret_registration_response
from deviceflow._provider import AWS_SSO
from deviceflow.stores import MemoryStore
from deviceflow.testing import VirtualClock

WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
JSON = {"content-type": "application/json"}


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status=status, headers=headers if headers is not None else JSON, body=raw)


def test_registration_answer_with_camel_case_names() -> None:
    """AWS's answer is read through the dialect's aliases; the expiry is an epoch time."""
    expires = int((WALL + timedelta(days=90)).timestamp())
    body = {"clientId": "id", "clientSecret": "secret", "clientSecretExpiresAt": expires}
    client = interpret_registration_response(answer(200, body), AWS_SSO, WALL)
    expected = RegisteredClient(
        client_id="id", client_secret="secret", expires_at=WALL + timedelta(days=90)
    )
    assert expected == client
    assert "secret" not in repr(client)


def test_registration_answer_without_expiry_never_expires() -> None:
    """client_secret_expires_at 0 (RFC 7591) or absent: the registration does not expire."""
    for body in ({"client_id": "id", "client_secret_expires_at": 0}, {"client_id": "id"}):
        client = interpret_registration_response(answer(201, body), None, WALL)
        assert (None, False) == (client.expires_at, client.expires_within(1e9, now=WALL))


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (answer(400, {"error": "invalid_client_metadata"}), OAuthError),
        (answer(503, {"error": "temporarily_unavailable"}), TransportError),
        (answer(503, b"<html>down</html>", {"content-type": "text/html"}), TransportError),
        (answer(502, {}), TransportError),
        (answer(400, b"<html>", {"content-type": "text/html"}), ProtocolError),
        (answer(404, {}), ProtocolError),
        (answer(200, {"client_secret": "s"}), ProtocolError),
        (answer(200, {"client_id": "i", "client_secret_expires_at": 1e300}), ProtocolError),
    ],
)
def test_registration_answer_errors_are_typed(response: Response, error: type[Exception]) -> None:
    """Errors, unavailability and malformed answers raise typed errors."""
    with pytest.raises(error):
        interpret_registration_response(response, Dialect(), WALL)


def test_registered_client_round_trips_and_refuses_garbage() -> None:
    """A stored registration reads back; anything else is a ProtocolError."""
    client = RegisteredClient(client_id="id", client_secret="s", expires_at=WALL)
    assert client == RegisteredClient.from_json(client.to_json())
    for garbage in (b"{", b"[]", b'{"client_id": 5}', b'{"client_id": "i", "expires_at": "x"}'):
        with pytest.raises(ProtocolError):
            RegisteredClient.from_json(garbage)


async def test_an_unreadable_stored_registration_is_replaced(virtual_clock: VirtualClock) -> None:
    """A corrupt registration record in the store is replaced by a new registration."""
    case, store = next(c for c in CASES if c.name == "aws_sso"), MemoryStore()
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, store=store, on_code=deciding(server))
        key = client.store_key("").rsplit("/", 1)[0] + "//registration"
        await store.put(key, b"not json", expected_version=None)
        async with client:
            token = await client.get_token()
        stored = await store.get(key)
    assert server.is_valid_access_token(token.access_token)
    assert stored is not None
    assert RegisteredClient.from_json(stored.value).client_id.startswith("reg_")
