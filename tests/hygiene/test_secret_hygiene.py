"""Secret hygiene: no token, device code, client secret or store key in any log, repr or message.

One test runs every flow (device grant with slow_down, denial, expiry, refresh with rotation,
transport faults during refresh, an id_token, logout with revocation, client_secret_post and
client_secret_basic, invalid_client, an encrypted file store written and read, a wrong store key)
at DEBUG on every logger, with aiohttp client tracing logging every callback. It gathers every
secret that crossed the wire (from the request and response bodies the trace saw, and from the
objects returned), then scans every log record (formatted, with tracebacks), and the repr() and
str() of every token, code, event, exception (with its causes), store, client and provider for
each secret and for any 12-character piece of one: zero hits.
"""

from __future__ import annotations

import json
import logging
import traceback
import types
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from deviceflow import (
    AccessDeniedError,
    AiohttpTransport,
    ClientAuth,
    DeviceCode,
    DeviceFlowClient,
    DeviceFlowError,
    ExpiredTokenError,
    FlowEvent,
    InvalidClientError,
    Provider,
    ReauthorizationRequiredError,
    Token,
)
from deviceflow.exceptions import DecryptionError
from deviceflow.stores import EncryptedFileStore, generate_key
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock

CLIENT_ID = "hygiene-client"
CLIENT_SECRET = "client-secret-Qm9vZ2xlIGlzIG5vdCBhIHNlY3JldA"
#: Names under which secrets travel, in requests (form) and answers (JSON).
SECRET_FIELDS = frozenset(
    {"access_token", "refresh_token", "id_token", "device_code", "client_secret", "token"}
)
WINDOW = 12

trace_log = logging.getLogger("tests.hygiene.aiohttp-trace")


class Evidence:
    """Secrets seen on the wire and everything that must not show them."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # value -> what it is
        self.texts: list[tuple[str, str]] = []  # (where, text)

    def secret(self, value: object, kind: str) -> None:
        if kind == "id_token" and isinstance(value, str) and value.count(".") == 2:
            # A JWT's header and claims are base64 of public data (the client id, the issuer),
            # which other texts hold by chance (HTTP Basic credentials); its signature is its own.
            value = value.rsplit(".", 1)[1]
        if isinstance(value, str) and len(value) >= WINDOW:
            self.secrets.setdefault(value, kind)

    def harvest(self, body: bytes) -> None:
        """Remember every secret field of a JSON or form body."""
        try:
            decoded = json.loads(body)
        except ValueError:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"))
        else:
            pairs = list(decoded.items()) if isinstance(decoded, dict) else []
        for name, value in pairs:
            if name in SECRET_FIELDS:
                self.secret(value, name)

    def token(self, token: Token) -> None:
        self.secret(token.access_token, "access_token")
        self.secret(token.refresh_token, "refresh_token")
        self.secret(token.id_token, "id_token")
        self.show(token)

    def show(self, *objects: object) -> None:
        """repr() and str() of each object, and of an exception's whole chain."""
        for obj in objects:
            if isinstance(obj, DeviceCode):
                self.secret(obj.device_code, "device_code")
            if isinstance(obj, FlowEvent):
                if obj.code is not None:
                    self.secret(obj.code.device_code, "device_code")
                if obj.token is not None:
                    self.token(obj.token)
                if obj.error is not None:
                    self.show(obj.error)
            self.texts.append((f"repr({type(obj).__name__})", repr(obj)))
            self.texts.append((f"str({type(obj).__name__})", str(obj)))
            if isinstance(obj, BaseException):
                for exc in _chain(obj):
                    where = f"exception {type(exc).__name__}"
                    self.texts.append((where, repr(exc)))
                    self.texts.append((where, str(exc)))
                    self.texts.append((where, repr(vars(exc))))
                    self.texts.append((where, "".join(traceback.format_exception(exc))))

    def hits(self) -> list[str]:
        found = []
        for value, kind in self.secrets.items():
            pieces = {value[i : i + WINDOW] for i in range(len(value) - WINDOW + 1)}
            for where, text in self.texts:
                if any(piece in text for piece in pieces):
                    found.append(f"{kind} {value[:6]}... in {where}: {text[:200]!r}")
        return found


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


def tracing(evidence: Evidence) -> aiohttp.TraceConfig:
    """A TraceConfig logging every callback at DEBUG; bodies are logged by length only."""
    config = aiohttp.TraceConfig()

    def logger(name: str) -> Any:
        async def callback(
            session: aiohttp.ClientSession, context: types.SimpleNamespace, params: Any
        ) -> None:
            shown = attrs.asdict(params, recurse=False)  # aiohttp's trace params are attrs
            if "chunk" in shown:
                if "response" in name:
                    evidence.harvest(shown["chunk"])
                shown["chunk"] = f"<{len(shown['chunk'])} bytes>"
            trace_log.debug("aiohttp %s %r", name, shown)

        return callback

    for name in dir(config):
        if name.startswith("on_"):
            getattr(config, name).append(logger(name))
    return config


async def _expect(evidence: Evidence, error: type[DeviceFlowError], call: Any) -> None:
    with pytest.raises(error) as caught:
        await call
    evidence.show(caught.value)


async def test_no_secret_in_logs_reprs_or_messages(
    tmp_path: Path, virtual_clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every flow at DEBUG with aiohttp tracing: no secret in any record, repr or message."""
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    key, other_key = generate_key(), generate_key()
    evidence.secret(key, "store key")
    evidence.secret(other_key, "store key")
    evidence.secret(CLIENT_SECRET, "client_secret")
    store = EncryptedFileStore(tmp_path / "store", key=key)
    session = aiohttp.ClientSession(trace_configs=[tracing(evidence)])
    server = AuthorizationServer(clock=virtual_clock, clients={CLIENT_ID: CLIENT_SECRET})
    async with server, session:
        provider = Provider(issuer=server.issuer)
        decisions: dict[str, str] = {}

        def on_code(code: DeviceCode, account: str) -> None:
            evidence.show(code)
            decision = decisions.get(account, "approve")
            if decision == "approve":
                server.slow_down(code.user_code)  # the next poll draws slow_down
                server.configure(auto_approve_after=2)
            elif decision == "deny":
                server.deny(code.user_code)
            else:
                server.expire(code.user_code)

        def client(**kwargs: Any) -> DeviceFlowClient:
            kwargs.setdefault("client_secret", CLIENT_SECRET)
            kwargs.setdefault("client_auth", "client_secret_post")
            kwargs.setdefault("store", store)
            return DeviceFlowClient(
                provider,
                client_id=CLIENT_ID,
                scope="openid offline_access",
                session=session,
                clock=virtual_clock,
                on_code=on_code,
                **kwargs,
            )

        # alice's transport is the one the client would build, made here to be shown too.
        alice_auth = ClientAuth.choose(CLIENT_ID, CLIENT_SECRET, "client_secret_post")
        alice_transport = AiohttpTransport(
            auth=alice_auth, dialect=provider.dialect, session=session
        )
        async with client(transport=alice_transport) as alice:
            # Device grant (with slow_down), a cached read, a forced refresh with rotation.
            evidence.token(await alice.get_token("alice"))
            evidence.token(await alice.get_token("alice"))
            evidence.token(await alice.refresh("alice"))
            # Refresh through a dropped connection and a 503 (retried, logged at DEBUG).
            server.faults.add(Fault(endpoint="token", drop=True))
            server.faults.add(Fault(endpoint="token", status=503, retry_after=1))
            evidence.token(await alice.refresh("alice"))
            # authorize() events, each one shown.
            server.configure(auto_approve_after=1)
            async for event in alice.authorize("events"):
                evidence.show(event)
            # Denial and expiry.
            decisions.update(bob="deny", carol="expire")
            await _expect(evidence, AccessDeniedError, alice.get_token("bob"))
            await _expect(evidence, ExpiredTokenError, alice.get_token("carol"))
            # An unsigned id_token (a fault answers the poll with one).
            server.faults.add(
                Fault(
                    endpoint="token",
                    status=200,
                    content_type="application/json",
                    body=json.dumps(
                        {
                            "access_token": "fault-access-token-3f8a9c2e1d",
                            "token_type": "Bearer",
                            "expires_in": 60,
                            "refresh_token": "fault-refresh-token-b7e1c4d9a0",
                            "id_token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJlcmluIn0.c2lnbmF0dXJl",
                        }
                    ),
                )
            )
            evidence.token(await alice.get_token("erin"))
            # Its refresh token is unknown to the server: invalid_grant, then no way back.
            alice.on_code = None
            await _expect(evidence, ReauthorizationRequiredError, alice.refresh("erin"))
            alice.on_code = on_code
            # Logout revokes the refresh token (RFC 7009) and deletes the record.
            assert await alice.logout("alice")
            evidence.token(await alice.get_token("frank"))
            versioned = await store.get(alice.store_key("frank"))
            evidence.show(alice, store, provider, alice_transport, alice_auth, versioned, server)

        async with client(client_auth="client_secret_basic") as gina:
            evidence.token(await gina.get_token("gina"))
            evidence.show(gina)

        async with client(client_secret="not-the-secret-at-all") as mallory:
            await _expect(evidence, InvalidClientError, mallory.get_token("mallory"))

        # The same folder opened with the wrong key: DecryptionError, from the store and the client.
        wrong = EncryptedFileStore(tmp_path / "store", key=other_key)
        await _expect(evidence, DecryptionError, wrong.get(alice.store_key("frank")))
        async with client(store=wrong) as eve:
            await _expect(evidence, DecryptionError, eve.get_token("frank"))
            evidence.show(eve, wrong)

        for request in server.requests:  # everything the client sent
            for name, value in request.form.items():
                if name in SECRET_FIELDS:
                    evidence.secret(value, name)

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for log_record in caplog.records:
        evidence.texts.append((f"log {log_record.name}", formatter.format(log_record)))
        evidence.texts.append((f"log {log_record.name} args", repr(log_record.args)))

    kinds = set(evidence.secrets.values())
    expected = {"access_token", "refresh_token", "id_token", "device_code", "client_secret"}
    assert expected | {"store key"} <= kinds  # the harvest worked
    assert any(r.name == trace_log.name for r in caplog.records)  # tracing was on
    assert any(r.name == "deviceflow" for r in caplog.records)  # deviceflow did log
    assert [] == evidence.hits()


async def test_no_dpop_key_in_logs_reprs_or_messages(
    tmp_path: Path, virtual_clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A DPoP flow at DEBUG with aiohttp tracing (nonce retries, a refresh, resource requests
    through BearerAuth, a refused refresh): the private key shows nowhere, nor do the tokens
    (but in the headers of the resource requests they are meant for)."""
    from deviceflow.aiohttp import BearerAuth

    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    store = EncryptedFileStore(tmp_path / "store", key=generate_key())
    session = aiohttp.ClientSession(trace_configs=[tracing(evidence)])
    server = AuthorizationServer(
        clock=virtual_clock, auto_approve_after=0, dpop=True, dpop_nonce=True
    )
    async with server, session:
        provider = Provider(issuer=server.issuer)

        def on_code(code: DeviceCode, account: str) -> None:
            evidence.show(code)

        async with DeviceFlowClient(
            provider,
            client_id=CLIENT_ID,
            session=session,
            clock=virtual_clock,
            store=store,
            on_code=on_code,
            dpop=True,
        ) as client:
            token = await client.get_token("alice")
            evidence.token(token)
            assert token.dpop_key is not None
            jwk = json.loads(token.dpop_key.record())["jwk"]
            evidence.secret(jwk["d"], "DPoP private key")
            evidence.token(await client.refresh("alice"))
            auth = BearerAuth(client, "alice")
            # (Not traced: its requests carry the access token in their headers, by design.)
            async with aiohttp.ClientSession(middlewares=(auth,)) as api:
                server.rotate_dpop_nonce()
                async with api.get(server.resource_url) as response:
                    assert 200 == response.status
            # A refresh the server refuses (another key): the error is shown too.
            await client.save_token("bob", attrs.evolve(token, access_token="x" * 16))
            server.revoke_all()
            virtual_clock.advance(7200)
            client.on_code = None
            await _expect(evidence, ReauthorizationRequiredError, client.get_token("bob"))
            evidence.show(client, store, token.dpop_key, auth)

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for log_record in caplog.records:
        evidence.texts.append((f"log {log_record.name}", formatter.format(log_record)))
        evidence.texts.append((f"log {log_record.name} args", repr(log_record.args)))
    assert "DPoP private key" in evidence.secrets.values()
    assert [] == evidence.hits()
