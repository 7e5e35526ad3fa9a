"""``python -m deviceflow.testing``: the standalone server."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from server_wire import get, post

from deviceflow.testing.__main__ import main
from helpers import DEVICE_GRANT, time_factor


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to the child")
async def test_standalone_server_prints_its_issuer_and_serves() -> None:
    """It prints the issuer first, auto-approves codes, and exits 0 on Ctrl-C."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deviceflow.testing",
        "--auto-approve",
        "--interval",
        "1",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        first_line = await asyncio.wait_for(process.stdout.readline(), 20 * time_factor())
        issuer = first_line.decode().strip()
        assert issuer.startswith("http://127.0.0.1:")
        metadata = (await get(issuer + "/.well-known/openid-configuration")).data
        code = (await post(metadata["device_authorization_endpoint"], {"client_id": "c"})).data
        assert 1 == code["interval"]
        token = await post(
            metadata["token_endpoint"],
            {"grant_type": DEVICE_GRANT, "device_code": code["device_code"], "client_id": "c"},
        )
        assert 200 == token.status
        lines = [
            await asyncio.wait_for(process.stdout.readline(), 5 * time_factor()) for _ in range(3)
        ]
        assert f"code issued: {code['user_code']}\n" == lines[-1].decode()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert 0 == await asyncio.wait_for(process.wait(), 10 * time_factor())
        finally:
            if process.returncode is None:  # it ignored Ctrl-C: end it here, then fail
                process.kill()
                await process.wait()


def test_bad_arguments_exit_with_usage() -> None:
    """An interval that is not a number is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as raised:
        main(["--interval", "soon"])
    assert 2 == raised.value.code


def test_non_loopback_host_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A non-loopback --host exits 1 with a message."""
    assert 1 == main(["--host", "192.0.2.1"])
    assert "loopback" in capsys.readouterr().err
