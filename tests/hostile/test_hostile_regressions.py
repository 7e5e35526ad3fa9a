"""Regression tests for the bugs the hostile-server suite, the fuzzer and the soak found."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from deviceflow import (
    DeviceFlowClient,
    OAuthError,
    ProtocolError,
    Provider,
    ReauthorizationRequiredError,
    Response,
    Token,
)
from deviceflow._parse import oauth_error, parse_body, parse_device_code, parse_token
from deviceflow._urls import require_secure_url
from deviceflow.stores import MemoryStore
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock
from helpers import make_client, stored_token

REFRESH = "refresh_token"


pytestmark = pytest.mark.authorization_server(auto_approve_after=0)


async def test_slow_down_answer_to_a_refresh_is_retried(
    authorization_server: AuthorizationServer,
) -> None:
    """A refresh answered slow_down is retried after a pause, not surfaced to the caller."""
    # Found by the soak: 0.5 % slow_down answers made get_token() raise OAuthError('slow_down')
    # whenever the cached token had run out (RFC 8628 3.5 defines slow_down for polling only;
    # outside it, it means "later", like 503, and the refresh token was not used).
    async with make_client(
        authorization_server, client_id="c", on_code=lambda code, account: None
    ) as client:
        first = await client.get_token()
        authorization_server.faults.add(
            Fault(
                endpoint="token",
                status=400,
                content_type="application/json",
                body='{"error": "slow_down"}',
            )
        )
        refreshed = await client.refresh()
    refreshes = [
        r
        for r in authorization_server.requests
        if r.endpoint == "token" and r.form.get("grant_type") == REFRESH
    ]
    assert 2 == len(refreshes)
    assert first.access_token != refreshed.access_token
    assert authorization_server.is_valid_access_token(refreshed.access_token)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"issuer": "https://a.example", "issuer": "https://b.example"}', "application/json"),
        (b'{"x": {"y": 1, "y": 2}}', "application/json"),
        (b"access_token=a&access_token=b", "application/x-www-form-urlencoded"),
    ],
)
def test_a_name_sent_twice_is_refused(body: bytes, content_type: str) -> None:
    """JSON names or form parameters sent twice are ambiguous and refused (ProtocolError)."""
    # Before, JSON kept the last value and form data the first: two readings of one answer.
    response = Response(status=200, headers={"content-type": content_type}, body=body)
    with pytest.raises(ProtocolError, match="more than once"):
        parse_body(response)


@pytest.mark.parametrize(
    "record",
    [b"not json", b'{"token": {"access_token": 5}}', b'{"v": 1, "token": []}'],
)
async def test_logout_deletes_a_malformed_record(record: bytes) -> None:
    """logout() deletes a record it can decrypt but not read, instead of raising StoreError."""
    # Its ``except ProtocolError`` never matched: record decoding raises StoreError.
    store = MemoryStore()
    provider = Provider(
        device_authorization_endpoint="https://idp.example/device",
        token_endpoint="https://idp.example/token",
    )
    async with DeviceFlowClient(provider, client_id="c", store=store) as client:
        await store.put(client.store_key("a"), record, expected_version=None)
        assert await client.logout("a") is False
        assert await stored_token(client, "a") is None


async def test_record_with_absurd_obtained_at_is_read(virtual_clock: VirtualClock) -> None:
    """A stored obtained_at outside datetime's range is ignored, not an OverflowError."""
    store = MemoryStore()
    provider = Provider(
        device_authorization_endpoint="https://idp.example/device",
        token_endpoint="https://idp.example/token",
    )
    token = Token(access_token="stored", expires_at=virtual_clock.wall() + timedelta(hours=1))
    async with DeviceFlowClient(provider, client_id="c", store=store, clock=virtual_clock) as c:
        record = b'{"v": 1, "obtained_at": 1e300, "token": ' + token.to_json() + b"}"
        await store.put(c.store_key("a"), record, expected_version=None)
        assert "stored" == (await c.get_token("a")).access_token
        assert await c.logout("a") is False


async def test_malformed_record_then_get_token_is_typed() -> None:
    """After logout() removed a malformed record, get_token() asks for a new sign-in (typed)."""
    store = MemoryStore()
    provider = Provider(
        device_authorization_endpoint="https://idp.example/device",
        token_endpoint="https://idp.example/token",
    )
    async with DeviceFlowClient(provider, client_id="c", store=store) as client:
        await store.put(client.store_key("a"), b"{}", expected_version=None)
        await client.logout("a")
        with pytest.raises(ReauthorizationRequiredError):
            await client.get_token("a")


ESCAPES = [
    "\x1b[2K\r",  # erase the line, back to its start: overwrite what was shown
    "\x1b]8;;https://evil.example\x1b\\",  # OSC 8 hyperlink
    "\x1b]0;title\x07",  # set the window title
    "\x9b2J",  # C1 CSI: clear the screen on terminals that honour 8-bit controls
    "\u202e",  # right-to-left override
]
WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _clean(text: str | None) -> bool:
    return text is not None and text.isprintable()


@pytest.mark.parametrize("escape", ESCAPES)
def test_terminal_escapes_in_server_text_are_neutralised(escape: str) -> None:
    """message, error_description, error_uri and scope reach people without control codes."""
    # The CLI prints them: before, a hostile server's escape sequences went to the terminal
    # as they were (and could rewrite the verification link shown above them).
    text = f"Go to the link{escape}and enter the code\nnow"
    code = parse_device_code(
        {
            "device_code": "d",
            "user_code": "U",
            "verification_uri": "https://idp.example/v",
            "expires_in": 600,
            "message": text,
        },
        WALL,
    )
    error = oauth_error(
        {"error": "access_denied", "error_description": text, "error_uri": text}, None, 400
    )
    token = parse_token({"access_token": "a", "token_type": "Bearer", "scope": text}, WALL)
    assert isinstance(error, OAuthError)
    assert _clean(code.message)
    assert _clean(error.description)
    assert _clean(error.uri)
    assert _clean(str(error))
    assert _clean(token.scope)
    assert "Go to the link" in (code.message or "")


@pytest.mark.parametrize("escape", ESCAPES)
def test_links_and_error_codes_with_control_characters_are_refused(escape: str) -> None:
    """A link or an error code carrying control or format characters is refused outright."""
    with pytest.raises(ProtocolError):
        require_secure_url(f"https://idp.example/device{escape}", "verification_uri")
    with pytest.raises(ProtocolError):
        oauth_error({"error": f"access_denied{escape}"}, None, 400)


def test_unlabelled_content_type_is_quoted_in_the_message() -> None:
    """A content type the client cannot read is quoted (repr) in the error, never raw."""
    response = Response(status=200, headers={"content-type": "text/x\x1b[2J"}, body=b"<x")
    with pytest.raises(ProtocolError) as caught:
        parse_body(response)
    assert _clean(str(caught.value))
