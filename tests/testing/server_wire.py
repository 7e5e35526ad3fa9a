"""Plain-aiohttp helpers for the test server's tests: no client code of ours is involved."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import attrs

from deviceflow.testing import AuthorizationServer
from helpers import DEVICE_GRANT

CLIENT = "bot"


@attrs.frozen
class Answer:
    """An HTTP answer, its body decoded as JSON or form when it is one."""

    status: int
    headers: Mapping[str, str]
    text: str
    content_type: str

    @property
    def data(self) -> dict[str, Any]:
        """The body as a dict (JSON object or form-encoded)."""
        if self.content_type == "application/x-www-form-urlencoded":
            return dict(parse_qsl(self.text))
        decoded = json.loads(self.text)
        assert isinstance(decoded, dict)
        return decoded

    @property
    def error(self) -> str | None:
        """The OAuth ``error`` of the body, if any."""
        value = self.data.get("error")
        return value if isinstance(value, str) else None


async def request(
    method: str,
    url: str,
    *,
    data: Any = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    auth: aiohttp.BasicAuth | None = None,
) -> Answer:
    """Send one request on a fresh session and read the whole answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, data=data, json=json_body, headers=headers, auth=auth
        ) as response,
    ):
        return Answer(
            status=response.status,
            headers=response.headers.copy(),
            text=await response.text(),
            content_type=response.content_type,
        )


async def post(url: str, data: Any = None, **kwargs: Any) -> Answer:
    """POST a form (or, with ``json_body=``, JSON)."""
    return await request("POST", url, data=data, **kwargs)


async def get(url: str, **kwargs: Any) -> Answer:
    """GET a URL."""
    return await request("GET", url, **kwargs)


async def start_flow(
    server: AuthorizationServer, client_id: str = CLIENT, **form: str
) -> dict[str, Any]:
    """Ask for a device code; returns the device authorization answer."""
    answer = await post(server.device_authorization_endpoint, {"client_id": client_id, **form})
    assert 200 == answer.status, answer.text
    return answer.data


async def poll(server: AuthorizationServer, device_code: str, client_id: str = CLIENT) -> Answer:
    """One device_code grant token request."""
    return await post(
        server.token_endpoint,
        {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": client_id},
    )


async def refresh(
    server: AuthorizationServer,
    refresh_token: str,
    client_id: str = CLIENT,
    scope: str | None = None,
) -> Answer:
    """One refresh_token grant token request."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    if scope is not None:
        form["scope"] = scope
    return await post(server.token_endpoint, form)


async def obtain_tokens(
    server: AuthorizationServer, client_id: str = CLIENT, **form: str
) -> dict[str, Any]:
    """Run a whole flow (approved at once) and return the token answer."""
    code = await start_flow(server, client_id, **form)
    server.approve(code["user_code"])
    answer = await poll(server, code["device_code"], client_id)
    assert 200 == answer.status, answer.text
    return answer.data


async def me(server: AuthorizationServer, access_token: str) -> Answer:
    """GET the protected resource with a Bearer token."""
    return await get(server.resource_url, headers={"Authorization": f"Bearer {access_token}"})
