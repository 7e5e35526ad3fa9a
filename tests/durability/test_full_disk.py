"""A full disk under an EncryptedFileStore: a rotated refresh token is neither lost nor replayed.

Each test mounts a tmpfs of 256 KiB and fills it to the last byte, so that the write after a
refresh fails with a real ENOSPC. Mounting needs Linux and the right to mount (root here); where
either is missing the tests skip and say which.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from durability_helpers import seed

from deviceflow import DeviceFlowClient, Provider
from deviceflow.stores import EncryptedFileStore, KeyMaterial, generate_key
from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import stored_token

SIZE = 256 * 1024
ACCOUNT = "tenant-7"
LIFETIME = 300  # the access token's life (virtual seconds)


class TinyDisk:
    """A tmpfs mounted at ``path`` that can be filled to the last byte and freed again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> int:
        """Write a filler file until not one more byte fits (ENOSPC); return its size."""
        written, chunk = 0, 64 * 1024
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while chunk:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2  # down to single bytes: the last page is filled too
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        """Delete the filler: the space is back."""
        self.filler.unlink()


def _mount_tmpfs(where: Path) -> str | None:
    """Mount a tmpfs of SIZE bytes at ``where``; the reason it could not, or None."""
    if not sys.platform.startswith("linux"):
        return f"mounting a tmpfs needs Linux, this is {sys.platform}"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount and umount are not on PATH"
    command = ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(where)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"{' '.join(command)} could not run: {exc}"
    if result.returncode != 0:
        problem = result.stderr.strip() or f"exit status {result.returncode}"
        return f"{' '.join(command)} failed as uid {os.geteuid()}: {problem}"
    return None


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[TinyDisk]:
    """A tmpfs of SIZE bytes of its own, unmounted at the end whatever happens."""
    where = tmp_path / "disk"
    where.mkdir()
    reason = _mount_tmpfs(where)
    if reason is not None:
        pytest.skip(reason)
    try:
        yield TinyDisk(where)
    finally:
        done = subprocess.run(["umount", str(where)], capture_output=True, timeout=30, check=False)
        if done.returncode != 0:  # still busy: detach it now, the kernel frees it once unused
            subprocess.run(["umount", "--lazy", str(where)], timeout=30, check=True)


@pytest.fixture
async def server(virtual_clock: VirtualClock) -> AsyncIterator[AuthorizationServer]:
    async with AuthorizationServer(
        clock=virtual_clock, access_token_lifetime=LIFETIME, rotate_refresh_tokens=True
    ) as srv:
        yield srv


def open_store(disk: TinyDisk, key: KeyMaterial) -> EncryptedFileStore:
    return EncryptedFileStore(disk.path / "tokens", key=key)


async def test_a_refresh_on_a_full_disk_is_kept_and_stored_once_space_returns(
    disk: TinyDisk, server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """ENOSPC on the write after a refresh: get_token serves the new token, flush() stores it
    once space returns, and a new client refreshes from the store with no grant lost."""
    key = generate_key()
    provider = Provider(issuer=server.issuer)
    store = open_store(disk, key)
    async with DeviceFlowClient(
        provider, client_id="svc", clock=virtual_clock, store=store
    ) as client:
        seeded = await seed(client, server, ACCOUNT, virtual_clock)  # signed in with space left
        assert 0 < disk.fill()
        assert 0 == shutil.disk_usage(disk.path).free
        virtual_clock.advance(LIFETIME + 100)
        refreshed = await client.get_token(ACCOUNT)  # refreshed; its write fails with ENOSPC
        assert server.is_valid_access_token(refreshed.access_token)
        assert seeded.access_token != refreshed.access_token
        assert {ACCOUNT} == client.unsaved_accounts()
        assert refreshed is await client.get_token(ACCOUNT)  # served from memory
        assert seeded == await stored_token(client, ACCOUNT)  # the old record is still there
        disk.free()
        assert await client.flush()
        assert frozenset() == client.unsaved_accounts()
        assert refreshed == await stored_token(client, ACCOUNT)
    await store.aclose()
    assert 1 == server.stats.refreshes

    again_store = open_store(disk, key)
    async with DeviceFlowClient(
        provider, client_id="svc", clock=virtual_clock, store=again_store
    ) as again:
        virtual_clock.advance(LIFETIME + 100)
        renewed = await again.get_token(ACCOUNT)  # refreshed with the stored, rotated token
        assert renewed == await stored_token(again, ACCOUNT)
    await again_store.aclose()
    assert server.is_valid_access_token(renewed.access_token)
    assert 0 == server.stats.invalid_grants
    assert 0 == server.stats.grants_revoked
    assert 2 == server.stats.refreshes


async def test_closing_on_a_full_disk_names_the_account_and_damages_nothing(
    disk: TinyDisk,
    server: AuthorizationServer,
    virtual_clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aclose() while the disk is still full logs one ERROR naming the account; the record stored
    before the refresh is intact (it decrypts) and takes writes once space returns."""
    key = generate_key()
    provider = Provider(issuer=server.issuer)
    store = open_store(disk, key)
    client = DeviceFlowClient(provider, client_id="svc", clock=virtual_clock, store=store)
    seeded = await seed(client, server, ACCOUNT, virtual_clock)
    disk.fill()
    virtual_clock.advance(LIFETIME + 100)
    refreshed = await client.get_token(ACCOUNT)
    assert server.is_valid_access_token(refreshed.access_token)
    assert {ACCOUNT} == client.unsaved_accounts()
    with caplog.at_level(logging.WARNING):
        await client.aclose()  # its last attempt meets ENOSPC too
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [("deviceflow", True)] == [(r.name, repr(ACCOUNT) in r.getMessage()) for r in errors]
    await store.aclose()

    disk.free()  # space comes back only after the close
    reopened = open_store(disk, key)
    async with DeviceFlowClient(
        provider, client_id="svc", clock=virtual_clock, store=reopened
    ) as reader:
        current = await reopened.get(reader.store_key(ACCOUNT))  # decrypts: no DecryptionError
        assert current is not None
        assert seeded == await stored_token(reader, ACCOUNT)
        version = await reopened.put(
            reader.store_key(ACCOUNT), current.value, expected_version=current.version
        )
        assert current.version + 1 == version
    await reopened.aclose()
    assert 1 == server.stats.refreshes
    assert 0 == server.stats.invalid_grants
