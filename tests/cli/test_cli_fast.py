"""Start-up: `import deviceflow` and `deviceflow token` with a fresh token stay light.

These check what is imported, not how long it takes (the time is measured by
benchmarks/bench_memory.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_harness import Cli, ServerThread

import deviceflow
from deviceflow.stores import EncryptedFileStore, KeySet, Passphrase, generate_key
from deviceflow.stores._peek import peek_record

_HEAVY = ("aiohttp", "asyncio", "anyio", "filelock")

_RUN_CLI = """
import json, sys
from deviceflow.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def _python(program: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program.replace("HEAVY", repr(json.dumps(_HEAVY))), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_import_deviceflow_imports_no_http_client_and_no_event_loop() -> None:
    """`import deviceflow` imports neither aiohttp nor asyncio; names load when first used."""
    program = (
        "import json, sys, deviceflow\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(HEAVY)))\n"
        "print(json.dumps(heavy))\n"
    )
    result = _python(program, env=dict(os.environ))
    assert (0, [], "") == (result.returncode, json.loads(result.stdout), result.stderr)


def test_every_public_name_loads_on_first_use() -> None:
    """Each name of __all__ resolves (and is listed by dir()); an unknown one is an
    AttributeError, as for any module."""
    for name in deviceflow.__all__:
        assert getattr(deviceflow, name) is not None
    assert set(deviceflow.__all__) <= set(dir(deviceflow))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        deviceflow.Nope  # noqa: B018
    from deviceflow import DeviceFlowClient, Token
    from deviceflow._client import DeviceFlowClient as Home

    assert (DeviceFlowClient, Token.__name__) == (Home, "Token")


def test_token_fast_path_imports_no_http_client(signed_in: tuple[Cli, ServerThread]) -> None:
    """`deviceflow token` with a fresh stored token prints it without importing aiohttp, the
    event loop or the lock library; with --debug (the full path) the same token comes out."""
    cli, server = signed_in
    env = cli.environment()
    fast = _python(_RUN_CLI, "token", "--account", "ci", "--json", env=env)
    full = _python(_RUN_CLI, "--debug", "token", "--account", "ci", "--json", env=env)
    fast_report = json.loads(fast.stderr.splitlines()[-1])
    assert {"code": 0, "heavy": []} == fast_report
    assert "asyncio" in json.loads(full.stderr.splitlines()[-1])["heavy"]  # the client ran
    fast_doc, full_doc = json.loads(fast.stdout), json.loads(full.stdout)
    assert abs(fast_doc.pop("expires_in") - full_doc.pop("expires_in")) <= 5
    assert fast_doc == full_doc
    assert server.is_valid(fast_doc["access_token"])


@pytest.mark.parametrize("fmt", ["json", "exec-credential"])
def test_token_formats_take_the_fast_path(signed_in: tuple[Cli, ServerThread], fmt: str) -> None:
    """kubectl runs its plugin for every command: `--format exec-credential` (and `--format
    json`) with a fresh token take the fast path too and print what the full path prints."""
    cli, server = signed_in
    env = {**cli.environment(), "KUBERNETES_EXEC_INFO": ""}
    fast = _python(_RUN_CLI, "token", "--account", "ci", "--format", fmt, env=env)
    full = _python(_RUN_CLI, "--debug", "token", "--account", "ci", "--format", fmt, env=env)
    assert {"code": 0, "heavy": []} == json.loads(fast.stderr.splitlines()[-1])
    fast_doc, full_doc = json.loads(fast.stdout), json.loads(full.stdout)
    fast_doc.pop("expires_in", None)
    full_doc.pop("expires_in", None)
    assert fast_doc == full_doc
    token = fast_doc["status"]["token"] if fmt == "exec-credential" else fast_doc["access_token"]
    assert server.is_valid(token)


def test_token_fast_path_keeps_to_the_issuer_and_client_given(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """With --issuer or --client-id that the stored account does not have, token does not
    hand out that account's token: it says to sign in."""
    cli, _ = signed_in
    other_issuer, other_client = cli.run_many(
        ["token", "--account", "ci", "--issuer", "https://idp.example.com", "--client-id", "x"],
        ["token", "--account", "ci", "--client-id", "someone-else"],
    )
    assert (6, "", 6, "") == (
        other_issuer.returncode,
        other_issuer.stdout,
        other_client.returncode,
        other_client.stdout,
    )
    assert "deviceflow login" in other_issuer.stderr + other_client.stderr


def _put(folder: Path, key: str | KeySet | Passphrase, value: bytes, ttl: float | None) -> None:
    async def write() -> None:
        store = EncryptedFileStore(folder, key=key)
        await store.put("acct", value, expected_version=None, ttl=ttl)
        await store.aclose()

    asyncio.run(write())


def test_peek_reads_what_the_store_wrote(tmp_path: Path) -> None:
    """peek_record() returns the value the file store holds, under any key of the key set."""
    old, new = generate_key(), generate_key()
    _put(tmp_path / "store", old, b"value", ttl=None)
    assert b"value" == peek_record(tmp_path / "store", KeySet(new, old), "acct")


@pytest.mark.parametrize("case", ["missing", "wrong key", "expired", "open folder", "passphrase"])
def test_peek_answers_none_when_unsure(tmp_path: Path, case: str) -> None:
    """A missing or expired record, a wrong key, a folder the store would refuse, or a
    passphrase key (it needs the store's KDF files): None, and nothing is changed."""
    folder = tmp_path / "store"
    key = generate_key()
    if case == "passphrase":
        secret = Passphrase("correct horse battery staple", work_factor=2**14)
        _put(folder, secret, b"value", ttl=None)
        keys = KeySet(secret)
    else:
        _put(folder, key, b"value", ttl=0.001 if case == "expired" else None)
        keys = KeySet(generate_key() if case == "wrong key" else key)
        if case == "expired":
            time.sleep(0.01)  # past the record's expiry for sure (the put may end within 1 ms)
    if case == "open folder":
        folder.chmod(0o755)
    before = sorted(str(p) for p in folder.rglob("*"))
    assert None is peek_record(folder, keys, "other" if case == "missing" else "acct")
    assert before == sorted(str(p) for p in folder.rglob("*"))


def _bind_to_a_key(cli: Cli, account: str) -> str:
    """Turn ``account``'s stored token into a DPoP-bound one (as a library client with
    dpop=True would have stored it); returns its access token."""
    import attrs

    from deviceflow import DeviceFlowClient, Provider
    from deviceflow._dpop import DPoPKey

    async def rebind() -> str:
        store = EncryptedFileStore(cli.store, key=cli.key)
        async with DeviceFlowClient(
            Provider(issuer=cli.issuer), client_id="cli-test", store=store
        ) as client:
            current = await client.get_token(account)
            bound = attrs.evolve(current, token_type="DPoP", dpop_key=DPoPKey.generate())
            await client.save_token(account, bound)
        return current.access_token

    return asyncio.run(rebind())


def test_dpop_token_is_never_printed_as_a_bearer_token(cli: Cli, server: ServerThread) -> None:
    """A DPoP-bound token is useless, and its binding defeated, as a bearer token: `token`
    and `--format exec-credential` refuse it (exit 6, with a hint), on the fast path and the
    full one; `--json` prints it, since the document names its token_type."""
    from cli_harness import login_approved

    assert 0 == login_approved(cli, server, *cli.server_args(), "--account", "ci").returncode
    access_token = _bind_to_a_key(cli, "ci")
    kube = {"KUBERNETES_EXEC_INFO": ""}
    fast, full, fast_kube, full_kube = cli.run_many(
        ["token", "--account", "ci"],
        ["--debug", "token", "--account", "ci"],
        ["token", "--account", "ci", "--format", "exec-credential"],
        ["--debug", "token", "--account", "ci", "--format", "exec-credential"],
        env=kube,
    )
    for refused in (fast, full, fast_kube, full_kube):
        assert (6, "") == (refused.returncode, refused.stdout), refused.stderr
        assert "DPoP-bound" in refused.stderr
        assert "request_headers" in refused.stderr
        assert access_token not in refused.stderr
    document = json.loads(cli.run("token", "--account", "ci", "--json").stdout)
    assert ("DPoP", access_token) == (document["token_type"], document["access_token"])


def test_issuer_without_client_id_takes_the_full_path(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """`token --issuer URL` without a client id fails on the full path ("no client id"), so
    the fast path does not print the one stored token of that issuer either."""
    cli, _ = signed_in
    fast, full = cli.run_many(
        ["token", "--account", "ci", "--issuer", cli.issuer],
        ["--debug", "token", "--account", "ci", "--issuer", cli.issuer],
    )
    assert (full.returncode, "") == (fast.returncode, fast.stdout)
    assert 0 != fast.returncode
    assert "client id" in fast.stderr
