"""DPoP (RFC 9449): sender-constrained tokens end to end against the built-in server."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from _redis import open_redis_store
from deviceflow import DeviceCode, DeviceFlowClient, FlowState, ProtocolError, StoreError, Token
from deviceflow.aiohttp import BearerAuth
from deviceflow.stores import EncryptedFileStore, MemoryStore, TokenStore, generate_key
from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import DEVICE_GRANT, issued_token, make_client, plant, seed, stored_token

pytestmark = pytest.mark.authorization_server(dpop=True, auto_approve_after=0)


async def no_op(code: DeviceCode, account: str) -> None:
    """An on_code for servers that approve at once."""


def dpop_client(server: AuthorizationServer, **kwargs: Any) -> DeviceFlowClient:
    """A client of ``server`` that asks for DPoP tokens."""
    kwargs.setdefault("on_code", no_op)
    return make_client(server, dpop=True, **kwargs)


def proofs(server: AuthorizationServer, endpoint: str) -> list[str]:
    """The DPoP headers of the requests ``server`` received at ``endpoint``."""
    return [
        r.headers["DPoP"] for r in server.requests if r.endpoint == endpoint and "DPoP" in r.headers
    ]


def claims(proof: str) -> dict[str, Any]:
    """The header and the claims of a proof JWT, read without checking it (the server does)."""
    from joserfc import jws

    extracted = jws.extract_compact(proof.encode())
    return {"header": dict(extracted.headers()), **json.loads(extracted.payload)}


async def get_me(
    server: AuthorizationServer, headers: dict[str, str], url: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """GET the server's protected resource with ``headers``: status, body, response headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url or server.resource_url, headers=headers) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


async def test_device_flow_gets_a_dpop_token_bound_to_a_new_key(
    authorization_server: AuthorizationServer,
) -> None:
    """dpop=True: the token request carries a proof and the server issues a DPoP token."""
    async with dpop_client(authorization_server) as client:
        token = await client.get_token()
    assert "DPoP" == token.token_type
    assert token.dpop_key is not None
    assert "ES256" == token.dpop_key.alg
    (proof,) = proofs(authorization_server, "token")
    seen = claims(proof)
    assert "dpop+jwt" == seen["header"]["typ"]
    assert token.dpop_key.jkt == _thumbprint(seen["header"]["jwk"])
    assert "d" not in seen["header"]["jwk"]
    assert ("POST", authorization_server.token_endpoint) == (seen["htm"], seen["htu"])
    assert "ath" not in seen


def _thumbprint(jwk: dict[str, Any]) -> str:
    from joserfc.jwk import ECKey

    return str(ECKey.import_key(jwk).thumbprint())


async def test_request_headers_authorize_the_resource(
    authorization_server: AuthorizationServer,
) -> None:
    """request_headers() gives DPoP headers the protected resource accepts, a new proof each."""
    async with dpop_client(authorization_server) as client:
        token = await client.get_token()
        first = await client.request_headers("GET", authorization_server.resource_url + "?x=1")
        second = await client.request_headers("GET", authorization_server.resource_url)
    assert f"DPoP {token.access_token}" == first["Authorization"]
    assert first["DPoP"] != second["DPoP"]
    seen = claims(first["DPoP"])
    assert ("GET", authorization_server.resource_url) == (seen["htm"], seen["htu"])
    assert "ath" in seen
    status, body, _ = await get_me(authorization_server, second)
    assert (200, "user") == (status, body["sub"])


async def test_bearer_client_gets_bearer_headers(
    authorization_server: AuthorizationServer,
) -> None:
    """Without dpop, request_headers() is just the bearer token, and the server takes it."""
    async with make_client(authorization_server, on_code=no_op) as client:
        token = await client.get_token()
        headers = await client.request_headers("GET", authorization_server.resource_url)
    assert {"Authorization": f"Bearer {token.access_token}"} == headers
    assert None is token.dpop_key
    assert 200 == (await get_me(authorization_server, headers))[0]


async def test_dpop_token_presented_as_bearer_is_refused(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 9449 7.2: the server refuses a DPoP-bound token sent as a bearer token."""
    async with dpop_client(authorization_server) as client:
        token = await client.get_token()
    status, body, headers = await get_me(
        authorization_server, {"Authorization": f"Bearer {token.access_token}"}
    )
    assert (401, "invalid_token") == (status, body["error"])
    assert headers["WWW-Authenticate"].startswith("DPoP ")


async def test_replayed_proof_is_refused(authorization_server: AuthorizationServer) -> None:
    """A proof sent twice (the same jti) is refused the second time."""
    async with dpop_client(authorization_server) as client:
        await client.get_token()
        headers = await client.request_headers("GET", authorization_server.resource_url)
    assert 200 == (await get_me(authorization_server, headers))[0]
    status, body, _ = await get_me(authorization_server, headers)
    assert (401, "invalid_dpop_proof") == (status, body["error"])
    assert 1 == authorization_server.stats.dpop_proofs_refused


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "http://127.0.0.1:1/api/me"), ("POST", "{resource}"), ("GET", "{token}")],
)
async def test_proof_for_another_request_is_refused(
    method: str, url: str, authorization_server: AuthorizationServer
) -> None:
    """A proof made for another URL or method does not authorize this request."""
    server = authorization_server
    async with dpop_client(server) as client:
        await client.get_token()
        target = url.format(resource=server.resource_url, token=server.token_endpoint)
        headers = await client.request_headers(method, target)
    status, body, _ = await get_me(server, headers)
    assert (401, "invalid_dpop_proof") == (status, body["error"])


async def test_refresh_keeps_the_key(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A refresh proves the same key, and the new token is bound to it (RFC 9449 5)."""
    async with dpop_client(authorization_server) as client:
        first = await client.get_token()
        virtual_clock.advance(3600)
        second = await client.get_token()
        headers = await client.request_headers("GET", authorization_server.resource_url)
    assert first.access_token != second.access_token
    assert 1 == authorization_server.stats.refreshes
    assert first.dpop_key == second.dpop_key
    assert ("DPoP", 2) == (second.token_type, len(proofs(authorization_server, "token")))
    assert 200 == (await get_me(authorization_server, headers))[0]


async def test_refresh_with_another_key_is_refused(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """The server refuses a refresh whose proof comes from another key than the grant's."""
    from deviceflow._dpop import DPoPKey

    async with dpop_client(authorization_server) as client:
        token = await client.get_token()
        await client.save_token("other", attrs.evolve(token, dpop_key=DPoPKey.generate()))
        virtual_clock.advance(3600)
        with pytest.raises(Exception, match="another key") as caught:
            await client.refresh("other")
    assert "invalid_dpop_proof" == getattr(caught.value, "error", None)


@pytest.mark.authorization_server(dpop_nonce=True)
async def test_server_nonce_is_used_after_one_retry(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """use_dpop_nonce at the token endpoint: sent again once with the nonce, then remembered."""
    async with dpop_client(authorization_server) as client:
        await client.get_token()
        virtual_clock.advance(3600)
        await client.get_token()  # the refresh reuses the nonce: no second use_dpop_nonce
        headers = await client.request_headers("GET", authorization_server.resource_url)
    assert 1 == authorization_server.stats.dpop_nonces_asked
    sent = [claims(p).get("nonce") for p in proofs(authorization_server, "token")]
    assert None is sent[0]
    assert sent[1] is not None
    assert sent[1] == sent[2]
    assert 200 == (await get_me(authorization_server, headers))[0]


@pytest.mark.authorization_server(dpop_nonce=True)
async def test_resource_nonce_retry_through_request_headers(
    authorization_server: AuthorizationServer,
) -> None:
    """A resource's use_dpop_nonce: request_headers(dpop_nonce=...) makes a proof with it."""
    server = authorization_server
    async with dpop_client(server) as client:
        await client.get_token()
        nonce = server.rotate_dpop_nonce()
        headers = await client.request_headers("GET", server.resource_url)
        status, body, answer = await get_me(server, headers)
        assert (401, "use_dpop_nonce", nonce) == (status, body["error"], answer["DPoP-Nonce"])
        retry = await client.request_headers("GET", server.resource_url, dpop_nonce=nonce)
    assert 200 == (await get_me(server, retry))[0]


@pytest.mark.authorization_server(dpop_nonce=True)
async def test_bearer_auth_is_transparent_with_dpop(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """BearerAuth sends DPoP headers, retries once on use_dpop_nonce, and refreshes once on
    invalid_token."""
    server = authorization_server
    async with dpop_client(server) as client:
        await client.get_token()
        auth = BearerAuth(client)
        async with aiohttp.ClientSession(middlewares=(auth,)) as session:
            async with session.get(server.resource_url) as response:
                assert 200 == response.status
            server.rotate_dpop_nonce()
            async with session.get(server.resource_url) as response:
                assert 200 == response.status
            server.expire_access_tokens()
            async with session.get(server.resource_url) as response:
                assert 200 == response.status
    assert 1 == server.stats.refreshes
    resource = [r.status for r in server.requests if r.endpoint == "resource"]
    assert [200, 401, 200, 401, 200] == resource


@pytest.mark.authorization_server(dpop=False)
async def test_bearer_token_where_dpop_was_asked_is_a_protocol_error(
    authorization_server: AuthorizationServer,
) -> None:
    """A server that ignores the proof issues a Bearer token: refused, naming the account,
    and the grant the device code gave is revoked."""
    async with dpop_client(authorization_server) as client:
        with pytest.raises(ProtocolError, match=r"'tenant-7'.*DPoP was asked for") as caught:
            await client.get_token("tenant-7")
        assert None is await client.store.get(client.store_key("tenant-7"))
    issued = [r for r in authorization_server.requests if r.endpoint == "token"]
    assert all("DPoP" in r.headers for r in issued)
    assert "at_" not in str(caught.value)
    # The device code was redeemed: the unused grant is revoked, not left alive.
    assert 1 == len([r for r in authorization_server.requests if r.endpoint == "revoke"])
    assert 1 == authorization_server.stats.grants_revoked


@pytest.mark.authorization_server(dpop=False)
async def test_wrong_type_grant_that_cannot_be_revoked_is_a_warning(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """When the server does not confirm the revocation of the unused grant, a warning names
    the account; the caller still gets the ProtocolError."""
    from deviceflow.testing import Fault

    authorization_server.faults.add(Fault(endpoint="revoke", status=400))
    caplog.set_level(logging.WARNING, logger="deviceflow")
    async with dpop_client(authorization_server) as client:
        with pytest.raises(ProtocolError, match="DPoP was asked for"):
            await client.get_token("tenant-8")
    assert any(
        "'tenant-8'" in r.getMessage() and "could not be revoked" in r.getMessage()
        for r in caplog.records
    )


async def test_server_algorithms_are_respected(
    authorization_server: AuthorizationServer,
) -> None:
    """Without ES256 in dpop_signing_alg_values_supported, another listed algorithm is used."""
    async with AuthorizationServer(
        clock=authorization_server.clock,
        dpop=True,
        auto_approve_after=0,
        dpop_algorithms=("PS256", "Ed25519"),
    ) as server:
        assert ["PS256", "Ed25519"] == server.metadata["dpop_signing_alg_values_supported"]
        async with dpop_client(server) as client:
            token = await client.get_token()
            headers = await client.request_headers("GET", server.resource_url)
        assert token.dpop_key is not None
        assert "Ed25519" == token.dpop_key.alg
        assert 200 == (await get_me(server, headers))[0]


@pytest.mark.authorization_server(dpop_algorithms=("HS256",))
async def test_no_algorithm_in_common_fails_the_flow(
    authorization_server: AuthorizationServer,
) -> None:
    """A server that lists only algorithms deviceflow cannot sign with: the flow fails."""
    async with dpop_client(authorization_server) as client:
        events = [e async for e in client.authorize()]
    assert FlowState.FAILED is events[-1].state
    assert isinstance(events[-1].error, ProtocolError)
    assert "HS256" in str(events[-1].error)


async def test_key_never_in_repr_or_logs(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The private key shows in no repr, str or log line; the key's repr names its thumbprint."""
    caplog.set_level(logging.DEBUG)
    store = MemoryStore()
    async with dpop_client(authorization_server, store=store) as client:
        token = await client.get_token()
        headers = await client.request_headers("GET", authorization_server.resource_url)
    assert token.dpop_key is not None
    private = json.loads(token.dpop_key.record())["jwk"]["d"]
    assert private not in repr(token) + str(token) + repr(token.dpop_key) + caplog.text
    assert private not in json.dumps(token.to_dict()) + json.dumps(headers)
    assert token.dpop_key.jkt in repr(token.dpop_key)


def private_part(token: Token) -> bytes:
    """The private key's ``d`` (base64url), as it would appear in a plaintext record."""
    assert token.dpop_key is not None
    return str(json.loads(token.dpop_key.record())["jwk"]["d"]).encode()


async def check_round_trip(
    server: AuthorizationServer, store: TokenStore, raw: Callable[[], Awaitable[bytes]]
) -> None:
    """A DPoP record written through ``store`` holds its key, encrypted; another client on the
    same store reads the key back and its proofs are accepted."""
    async with dpop_client(server, store=store) as client:
        token = await client.get_token("tenant-1")
    stored = await raw()
    assert private_part(token) not in stored
    assert token.dpop_key is not None
    assert token.dpop_key.jkt.encode() not in stored
    async with dpop_client(server, store=store, on_code=None) as other:
        again = await other.get_token("tenant-1")
        headers = await other.request_headers("GET", server.resource_url, "tenant-1")
    assert (token.access_token, token.dpop_key) == (again.access_token, again.dpop_key)
    assert 200 == (await get_me(server, headers))[0]


async def test_file_store_keeps_the_key_encrypted(
    authorization_server: AuthorizationServer, tmp_path: Path
) -> None:
    """EncryptedFileStore: the key survives a round trip; no file holds it in plaintext."""
    folder = tmp_path / "tokens"
    store = EncryptedFileStore(folder, key=generate_key())

    async def raw() -> bytes:
        return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())

    await check_round_trip(authorization_server, store, raw)


@pytest.mark.redis
async def test_redis_store_keeps_the_key_encrypted(
    authorization_server: AuthorizationServer, redis_server: Any
) -> None:
    """RedisStore: the key survives a round trip; no Redis value holds it in plaintext."""
    import redis.asyncio

    async def raw() -> bytes:
        # Every value of every hash (records) and string (locks) as Redis holds it.
        client = redis.asyncio.Redis.from_url(redis_server.url)
        values: list[bytes | str] = []
        try:
            async for key in client.scan_iter():
                if await client.type(key) == b"hash":
                    values += (await client.hgetall(key)).values()
                else:
                    values.append(await client.get(key) or b"")
        finally:
            await client.aclose()
        return b"".join(v if isinstance(v, bytes) else v.encode() for v in values)

    async with open_redis_store(redis_server, key=generate_key()) as store:
        await check_round_trip(authorization_server, store, raw)


async def test_old_records_without_a_key_keep_working(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Bearer record (no key) stays usable by a dpop=True client: sent and refreshed as
    Bearer, until a new device flow binds the account to a key; a warning says so once per
    account, naming it."""
    store = MemoryStore()
    async with make_client(authorization_server, store=store) as client:
        await seed(client, authorization_server, "legacy")
        await seed(client, authorization_server, "other")
    caplog.set_level(logging.WARNING, logger="deviceflow")
    async with dpop_client(authorization_server, store=store, on_code=None) as client:
        headers = await client.request_headers("GET", authorization_server.resource_url, "legacy")
        assert headers["Authorization"].startswith("Bearer ")
        assert 200 == (await get_me(authorization_server, headers))[0]
        fresh = await client.refresh("legacy")
        await client.refresh("legacy")
        await client.get_token("other")
    assert ("Bearer", None) == (fresh.token_type, fresh.dpop_key)
    warned = [r.getMessage() for r in caplog.records if "sender-constrained" in r.getMessage()]
    assert ["account 'legacy'", "account 'other'"] == [m.split(":")[0] for m in warned]
    assert all("next sign-in" in message for message in warned)


async def test_damaged_stored_key_is_a_store_error(
    authorization_server: AuthorizationServer,
) -> None:
    """A record whose key cannot be read raises StoreError; the record stays as it was."""
    store = MemoryStore()
    async with dpop_client(authorization_server, store=store) as client:
        await client.get_token()
        key = client.store_key()
    current = await store.get(key)
    assert current is not None
    document = json.loads(current.value)
    document["dpop"]["jwk"] = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}
    await store.put(key, json.dumps(document).encode(), expected_version=current.version)
    async with dpop_client(authorization_server, store=store, on_code=None) as client:
        with pytest.raises(StoreError, match="DPoP key"):
            await client.get_token()
    after = await store.get(key)
    assert after is not None
    assert json.dumps(document).encode() == after.value


def forged(server: AuthorizationServer, token: Token, **changes: Any) -> dict[str, str]:
    """Headers with a proof made by hand for the resource, ``changes`` applied: header fields
    (``typ``, ``alg``, ``jwk``), claims (``None`` drops one), or ``proof`` (the whole header)."""
    from joserfc import jws

    assert token.dpop_key is not None
    key = token.dpop_key._key  # the token's own key: only the change is wrong
    header: dict[str, Any] = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    body: dict[str, Any] = {
        "jti": f"jti-{len(server.requests)}-{sorted(changes)}",
        "htm": "GET",
        "htu": server.resource_url,
        "iat": int(server.clock.wall().timestamp()),
        "ath": _ath(token.access_token),
    }
    for name, value in changes.items():
        target = header if name in ("typ", "alg", "jwk") else body
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    payload = changes.get("claims", body)
    proof = changes.get("proof") or jws.serialize_compact(
        header, json.dumps(payload).encode(), key, algorithms=["ES256"]
    )
    return {"Authorization": f"DPoP {token.access_token}", "DPoP": proof}


def _ath(access_token: str) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "changes",
    [
        {"typ": "JWT"},
        {"proof": "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30."},  # alg none, unsigned
        {"jwk": {"kty": "EC"}},
        {"jwk": {"kty": "oct", "k": "AAAA"}},
        {"proof": "not a jws"},
        {"proof": "a" * 5000},
        {"claims": ["not", "an", "object"]},
        {"jti": None},
        {"htm": "PUT"},
        {"htu": None},
        {"iat": None},
        {"iat": True},
        {"iat": 1},
        {"ath": None},
        {"ath": "aGFzaCBvZiBzb21ldGhpbmcgZWxzZQ"},
    ],
)
async def test_malformed_proofs_are_refused(
    changes: dict[str, Any], authorization_server: AuthorizationServer
) -> None:
    """The server refuses a resource proof that breaks any rule of RFC 9449 4.3."""
    async with dpop_client(authorization_server) as client:
        token = await client.get_token()
    good = forged(authorization_server, token)
    assert 200 == (await get_me(authorization_server, good))[0]
    status, body, _ = await get_me(
        authorization_server, forged(authorization_server, token, **changes)
    )
    assert (401, "invalid_dpop_proof") == (status, body["error"])


async def test_proof_of_another_key_or_none_at_all_is_refused(
    authorization_server: AuthorizationServer,
) -> None:
    """The resource wants the token's own key, one DPoP header, and DPoP only for DPoP tokens."""
    server = authorization_server
    async with dpop_client(server) as client, make_client(server, on_code=no_op) as bearer:
        token = await client.get_token()
        other = await client.get_token("other")
        mixed = await client.request_headers("GET", server.resource_url, "other")
        plain = await bearer.get_token()
    mixed["Authorization"] = f"DPoP {token.access_token}"
    assert "invalid_dpop_proof" == (await get_me(server, mixed))[1]["error"]
    no_proof = {"Authorization": f"DPoP {other.access_token}"}
    assert "invalid_dpop_proof" == (await get_me(server, no_proof))[1]["error"]
    as_dpop = {"Authorization": f"DPoP {plain.access_token}"}
    assert "invalid_token" == (await get_me(server, as_dpop))[1]["error"]
    unknown = {"Authorization": "DPoP at_unknown"}
    assert "invalid_token" == (await get_me(server, unknown))[1]["error"]


async def test_token_endpoint_refuses_a_bad_proof_and_a_bound_refresh_without_one(
    authorization_server: AuthorizationServer,
) -> None:
    """invalid_dpop_proof for a token request with a bad proof, and for the refresh of a
    DPoP grant without a proof; a Bearer grant is not refreshed with a proof."""
    server = authorization_server
    async with dpop_client(server) as client:
        token = await client.get_token()
    issued = server.issue_tokens("svc")
    refresh = {"grant_type": "refresh_token", "client_id": "svc"}
    async with aiohttp.ClientSession() as session:
        for headers, form in [
            ({"DPoP": "not a jws"}, {**refresh, "refresh_token": str(token.refresh_token)}),
            ({}, {**refresh, "refresh_token": str(token.refresh_token)}),
            (
                {
                    "DPoP": forged(server, token, htm="POST", htu=server.token_endpoint, ath=None)[
                        "DPoP"
                    ]
                },
                {**refresh, "refresh_token": issued["refresh_token"]},
            ),
        ]:
            async with session.post(server.token_endpoint, data=form, headers=headers) as answer:
                assert (400, "invalid_dpop_proof") == (
                    answer.status,
                    (await answer.json())["error"],
                )


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "Ed25519", "EdDSA", "PS256", "RS256"])
def test_every_algorithm_survives_the_record(alg: str) -> None:
    """Keys of every algorithm deviceflow signs with come back whole from their record."""
    from deviceflow._dpop import DPoPKey

    key = DPoPKey.generate(alg)
    again = DPoPKey.from_record(json.loads(key.record()))
    assert (key, hash(key)) == (again, hash(again))
    assert key != object()
    assert alg == again.alg


@pytest.mark.parametrize(
    "record",
    [
        None,
        {"alg": "HS256", "jwk": {}},
        {"alg": "ES256", "jwk": "nope"},
        {"alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256"}},
    ],
)
def test_damaged_key_records_are_protocol_errors(record: Any) -> None:
    """A stored key that is not one is refused with ProtocolError, never half-read."""
    from deviceflow._dpop import DPoPKey

    with pytest.raises(ProtocolError, match="DPoP key"):
        DPoPKey.from_record(record)
    with pytest.raises(ValueError, match="unsupported"):
        DPoPKey.generate("HS256")


@pytest.mark.parametrize(
    ("alg", "made_for"), [("ES384", "ES256"), ("ES256", "ES512"), ("ES512", "ES384")]
)
def test_key_of_another_curve_than_its_algorithm_is_refused(alg: str, made_for: str) -> None:
    """A stored key whose curve does not fit its algorithm is refused when read, with
    ProtocolError, not when the first proof is signed."""
    from deviceflow._dpop import DPoPKey

    record = json.loads(DPoPKey.generate(made_for).record())
    record["alg"] = alg
    with pytest.raises(ProtocolError, match="does not fit its algorithm"):
        DPoPKey.from_record(record)


def test_okp_key_of_another_curve_is_refused() -> None:
    """An OKP key that is not Ed25519 (X25519 here) cannot sign Ed25519 proofs."""
    from joserfc.jwk import OKPKey

    from deviceflow._dpop import DPoPKey

    jwk = dict(OKPKey.generate_key("X25519").as_dict(private=True))
    with pytest.raises(ProtocolError, match="does not fit"):
        DPoPKey.from_record({"alg": "Ed25519", "jwk": jwk})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@Example.COM/p?q=1#f", "https://example.com/p"),
        ("HTTPS://example.com:443", "https://example.com/"),
        ("http://127.0.0.1:80/a/b", "http://127.0.0.1/a/b"),
        ("http://127.0.0.1:8080/a", "http://127.0.0.1:8080/a"),
        ("https://token@[::1]:8443/x", "https://[::1]:8443/x"),
    ],
)
def test_htu_is_the_normalised_url_without_credentials(url: str, expected: str) -> None:
    """RFC 9449 4.2, 4.3: htu is scheme, host, port and path, normalised; userinfo, query
    and fragment never go into the signed proof."""
    from deviceflow._dpop import DPoPKey, htu

    assert expected == htu(url)
    proof = DPoPKey.generate().proof("GET", url, now=datetime.now(timezone.utc))
    assert "pw" not in claims(proof)["htu"]
    assert expected == claims(proof)["htu"]


def test_public_key_alone_is_not_a_stored_key() -> None:
    """A record holding only the public half is refused: it could not sign."""
    from deviceflow._dpop import DPoPKey

    record = json.loads(DPoPKey.generate().record())
    del record["jwk"]["d"]
    with pytest.raises(ProtocolError, match="no private part"):
        DPoPKey.from_record(record)


@pytest.mark.authorization_server(auto_approve_after=None)
async def test_device_code_is_bound_to_the_key(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 9449 10: the device code names the key (dpop_jkt); a stolen device code polled with
    another key's proof is refused, while the client's own polls go on to the token."""
    from deviceflow._dpop import DPoPKey

    server = authorization_server
    async with dpop_client(server) as client:
        events = client.authorize()
        async for event in events:
            if event.state is FlowState.PENDING and event.code is not None:
                break
        assert event.code is not None
        thief = DPoPKey.generate().proof("POST", server.token_endpoint, now=server.clock.wall())
        form = {
            "grant_type": DEVICE_GRANT,
            "device_code": event.code.device_code,
            "client_id": "svc",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.token_endpoint, data=form, headers={"DPoP": thief}) as answer,
        ):
            assert (400, "invalid_dpop_proof") == (answer.status, (await answer.json())["error"])
        server.approve(event.code.user_code)
        rest = [later async for later in events]
    assert FlowState.GRANTED is rest[-1].state
    token = rest[-1].token
    assert token is not None
    assert token.dpop_key is not None
    (device,) = [r for r in server.requests if r.endpoint == "device"]
    assert token.dpop_key.jkt == device.form["dpop_jkt"]


@pytest.mark.parametrize("dpop", [True, False])
async def test_dpop_token_without_its_key_is_not_saved(
    authorization_server: AuthorizationServer, dpop: bool
) -> None:
    """save_token refuses a DPoP token without its key (it could make no proof), whether the
    client asks for DPoP or not: ProtocolError naming the account, nothing stored, and the
    token not in the message."""
    async with dpop_client(authorization_server) as signed_in:
        token = attrs.evolve(await signed_in.get_token(), dpop_key=None)
    async with make_client(authorization_server, dpop=dpop) as client:
        with pytest.raises(ProtocolError, match=r"'imported'.*has no key") as caught:
            await client.save_token("imported", token)
        assert None is await client.store.get(client.store_key("imported"))
    assert token.access_token not in str(caught.value)


async def test_dpop_token_without_its_key_is_not_used(
    authorization_server: AuthorizationServer,
) -> None:
    """A DPoP record without its key, written by other means than save_token, cannot make
    proofs: ProtocolError naming the account, and the token is not in the message."""
    async with dpop_client(authorization_server) as client:
        token = await client.get_token()
        await plant(client, "imported", attrs.evolve(token, dpop_key=None))
        with pytest.raises(ProtocolError, match=r"'imported'.*without its key") as caught:
            await client.request_headers("GET", authorization_server.resource_url, "imported")
    assert token.access_token not in str(caught.value)


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "N_A"])
async def test_dpop_client_refuses_to_save_a_token_of_another_type(
    authorization_server: AuthorizationServer, token_type: str
) -> None:
    """A dpop=True client does not store a Bearer token (or any token but a DPoP one) given to
    save_token: its requests would go without a proof, silently. ProtocolError naming the
    account and the type, nothing stored, the account's DPoP token left as it was."""
    token = attrs.evolve(issued_token(authorization_server, "svc"), token_type=token_type)
    async with dpop_client(authorization_server) as client:
        bound = await client.get_token("imported")
        with pytest.raises(
            ProtocolError, match=rf"'imported'.*dpop=True.*'{token_type}'"
        ) as caught:
            await client.save_token("imported", token)
        assert bound == await client.get_token("imported")
        stored = await stored_token(client, "imported")
    assert stored is not None
    assert ("DPoP", bound.access_token) == (stored.token_type, stored.access_token)
    assert token.access_token not in str(caught.value)


async def test_key_on_a_token_of_another_type_is_not_saved(
    authorization_server: AuthorizationServer,
) -> None:
    """A DPoP key travels only with a DPoP token: a Bearer token carrying one is refused."""
    from deviceflow._dpop import DPoPKey

    token = issued_token(authorization_server, "svc")
    async with make_client(authorization_server) as client:
        with pytest.raises(ProtocolError, match=r"'mixed'.*'Bearer' token to save has a DPoP key"):
            await client.save_token("mixed", attrs.evolve(token, dpop_key=DPoPKey.generate()))
        assert None is await client.store.get(client.store_key("mixed"))


async def test_dpop_token_with_its_key_is_saved_and_used(
    authorization_server: AuthorizationServer,
) -> None:
    """A DPoP token with its key (from another client of the same grant) is stored, key
    included, and its requests carry proofs the resource accepts."""
    async with dpop_client(authorization_server) as signed_in:
        token = await signed_in.get_token()
    async with dpop_client(authorization_server, on_code=None) as client:
        await client.save_token("moved", token)
        headers = await client.request_headers("GET", authorization_server.resource_url, "moved")
        stored = await client.get_token("moved")
    assert token.dpop_key == stored.dpop_key
    assert 200 == (await get_me(authorization_server, headers))[0]


def test_nonces_are_kept_per_origin_and_bounded() -> None:
    """The latest nonce of each server origin is used; malformed nonces are ignored, and the
    oldest origin is forgotten once 256 are known."""
    from datetime import datetime, timezone

    from deviceflow._dpop import DPoP, DPoPKey

    dpop = DPoP(lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))
    key = DPoPKey.generate()

    def nonce_for(url: str) -> object:
        return claims(dpop.proof(key, "GET", url)).get("nonce")

    dpop.remember("https://API.example/a?q=1", "n-1")
    dpop.remember("https://api.example/b", 'bad "nonce"')
    dpop.remember("https://api.example/c", "x" * 2000)
    dpop.remember("https://api.example/d", None)
    assert "n-1" == nonce_for("https://api.example/other")
    assert None is nonce_for("https://other.example/")
    for n in range(256):
        dpop.remember(f"https://host-{n}.example/", f"n{n}")
    assert None is nonce_for("https://api.example/")
    assert "n255" == nonce_for("https://host-255.example/x")


@pytest.mark.parametrize(
    ("status", "headers", "body", "retried"),
    [
        (400, {"dpop-nonce": "n-2"}, b'{"error": "use_dpop_nonce"}', True),
        (401, {"dpop-nonce": "n-2"}, b'{"error": "use_dpop_nonce"}', True),
        (400, {"dpop-nonce": "n-2"}, b"use_dpop_nonce, not JSON", False),
        (400, {}, b'{"error": "use_dpop_nonce"}', False),
        (400, {"dpop-nonce": "n-2"}, b'{"error": "invalid_dpop_proof"}', False),
        (500, {"dpop-nonce": "n-2"}, b'{"error": "use_dpop_nonce"}', False),
    ],
)
async def test_token_request_is_sent_again_only_for_a_nonce(
    status: int, headers: dict[str, str], body: bytes, retried: bool
) -> None:
    """Only a use_dpop_nonce error with a DPoP-Nonce header earns the one retry; the nonce of
    any answer is kept."""
    from datetime import datetime, timezone

    from deviceflow import Request, RequestKind, Response
    from deviceflow._dpop import DPoP, DPoPKey

    dpop = DPoP(lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))
    sent: list[Request] = []

    async def send(request: Request) -> Response:
        sent.append(request)
        return Response(status=status, headers=headers, body=body)

    request = Request(kind=RequestKind.TOKEN, method="POST", url="https://idp.example/token")
    await dpop.exchange(request, DPoPKey.generate(), send)
    assert (2 if retried else 1) == len(sent)
    nonces = [claims(r.headers["DPoP"]).get("nonce") for r in sent]
    assert [None, "n-2"][: len(sent)] == nonces


class RetypingTransport:
    """The real transport, except that while ``retype`` is set, refresh answers come back
    with that token_type (a server that forgets the grant is DPoP-bound, or the reverse)."""

    def __init__(self) -> None:
        from deviceflow import AiohttpTransport, ClientAuth

        self.real = AiohttpTransport(auth=ClientAuth(client_id="svc"))
        self.retype: str | None = None
        self.rotated: list[str] = []

    async def send(self, request: Any, *, timeout: float | None = None) -> Any:
        response = await self.real.send(request, timeout=timeout)
        if self.retype is None or request.params.get("grant_type") != "refresh_token":
            return response
        body = json.loads(response.body)
        self.rotated.append(body["refresh_token"])
        body["token_type"] = self.retype
        return attrs.evolve(response, body=json.dumps(body).encode())

    async def aclose(self) -> None:
        await self.real.aclose()


@pytest.mark.parametrize("dpop", [True, False])
async def test_refresh_of_the_wrong_type_keeps_the_rotated_refresh_token(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock, dpop: bool
) -> None:
    """A refresh answering a token of another type than the grant's raises ProtocolError
    naming the account and hands out nothing of that type, but stores the rotated refresh
    token (with the grant's key), so the grant goes on with the next refresh."""
    transport = RetypingTransport()
    store = MemoryStore()
    client = make_client(
        authorization_server, on_code=no_op, store=store, transport=transport, dpop=dpop
    )
    async with client:
        first = await client.get_token("ops")
        virtual_clock.advance(3600)
        transport.retype = "Bearer" if dpop else "DPoP"
        with pytest.raises(ProtocolError, match=r"'ops'.*refresh answered") as caught:
            await client.get_token("ops")
        (rotated,) = transport.rotated
        assert rotated not in str(caught.value)
        kept = await stored_token(client, "ops")
        assert kept is not None
        assert (rotated, first.token_type) == (kept.refresh_token, kept.token_type)
        assert first.access_token == kept.access_token  # the wrong-type one is never stored
        with pytest.raises(ProtocolError, match="'ops'"):
            await client.request_headers("GET", authorization_server.resource_url, "ops")
        transport.retype = None
        second = await client.get_token("ops")
        headers = await client.request_headers("GET", authorization_server.resource_url, "ops")
    assert (first.token_type, first.dpop_key) == (second.token_type, second.dpop_key)
    assert 3 == authorization_server.stats.refreshes
    assert 200 == (await get_me(authorization_server, headers))[0]
