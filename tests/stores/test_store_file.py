"""EncryptedFileStore beyond the contract: files, modes, tampering, passphrases, rotation."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import anyio
import pytest

from deviceflow.exceptions import (
    ConflictError,
    DecryptionError,
    KeyDerivationError,
    StoreError,
)
from deviceflow.stores import EncryptedFileStore, KeySet, Passphrase, Versioned, generate_key

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


def files(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its path relative to root."""
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def snapshot(path: Path) -> tuple[bytes, int, int]:
    """A file's bytes, mtime and inode: enough to tell that nobody touched it."""
    info = path.stat()
    return path.read_bytes(), info.st_mtime_ns, info.st_ino


def record_file(root: Path) -> Path:
    """The one record file under ``root``."""
    (record,) = root.rglob("*.tok")
    return record


async def put_new(store: EncryptedFileStore, key: str, value: bytes) -> Path:
    """Create ``key`` and return the record file the write added."""
    before = set(store.path.rglob("*.tok"))
    await store.put(key, value, expected_version=None)
    (added,) = set(store.path.rglob("*.tok")) - before
    return added


async def test_one_file_per_key_named_by_hash(tmp_path: Path) -> None:
    """Each key has one record file, named by a hash, never by the key."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    for i in range(5):
        await store.put(f"tenant-name-{i}", b"token", expected_version=None)
    names = files(tmp_path / "s")
    assert 5 == sum(name.endswith(".tok") for name in names)
    assert not any("tenant" in name for name in names)


async def test_values_are_encrypted_on_disk(tmp_path: Path) -> None:
    """The token bytes do not appear in any file."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    await store.put("k", b"visible-token-text", expected_version=None)
    async with store.lock("k", ttl=5, wait=0):
        pass
    found = files(tmp_path / "s")
    assert 1 == sum(name.endswith(".tok") for name in found)  # the record is among them
    assert [] == [
        name for name, path in found.items() if b"visible-token-text" in path.read_bytes()
    ]


@posix_only
async def test_modes_are_private(tmp_path: Path) -> None:
    """Folders are 0700 and files 0600, whatever the umask."""
    old_umask = os.umask(0)
    try:
        store = EncryptedFileStore(
            tmp_path / "a" / "s", key=KeySet(Passphrase("pw", work_factor=2**10))
        )
        await store.put("k", b"v", expected_version=None)
        async with store.lock("k", ttl=5, wait=0):
            pass
    finally:
        os.umask(old_umask)
    root = tmp_path / "a" / "s"
    dirs = [tmp_path / "a", root, *(p for p in root.rglob("*") if p.is_dir())]
    assert {0o700} == {stat.S_IMODE(d.stat().st_mode) for d in dirs}
    found = files(root)
    assert {".tok", ".wlock", ".lock", ".json"} == {Path(name).suffix for name in found}
    assert {0o600} == {stat.S_IMODE(p.stat().st_mode) for p in found.values()}


def mode(path: Path) -> int:
    """The permission bits of ``path`` (following a symbolic link)."""
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
async def test_missing_parent_folders_are_created_private(tmp_path: Path, umask: int) -> None:
    """Every folder the store creates, parents included, is 0700 whatever the umask."""
    before = mode(tmp_path)
    old_umask = os.umask(umask)
    try:
        store = EncryptedFileStore(tmp_path / "x" / "y" / "z" / "s", key=generate_key())
        assert None is await store.get("k")  # creates the folders, no file
    finally:
        os.umask(old_umask)
    created = [tmp_path / "x", tmp_path / "x" / "y", tmp_path / "x" / "y" / "z", store.path]
    assert [0o700] * 4 == [mode(folder) for folder in created]
    assert before == mode(tmp_path)


@posix_only
@pytest.mark.parametrize("open_mode", [0o755, 0o750, 0o707, 0o1777])
async def test_existing_open_folder_is_refused_and_left_as_it_is(
    tmp_path: Path, open_mode: int
) -> None:
    """A store folder that exists with group/other access is refused, its mode unchanged."""
    root = tmp_path / "s"
    root.mkdir()
    root.chmod(open_mode)
    with pytest.raises(StoreError, match="chmod 700"):
        await EncryptedFileStore(root, key=generate_key()).put("k", b"v", expected_version=None)
    assert open_mode == mode(root)
    assert [] == list(root.iterdir())


@posix_only
async def test_existing_private_folder_is_used(tmp_path: Path) -> None:
    """An existing 0700 folder is used as it is."""
    root = tmp_path / "s"
    root.mkdir(mode=0o700)
    store = EncryptedFileStore(root, key=generate_key())
    await store.put("k", b"v", expected_version=None)
    assert Versioned(b"v", 1) == await store.get("k")


@posix_only
async def test_symlinked_root_is_refused_unless_followed(tmp_path: Path) -> None:
    """A store path that is a symbolic link is refused; follow_symlinks=True uses its target."""
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        await EncryptedFileStore(link, key=generate_key()).get("k")
    assert [] == list(target.iterdir())
    store = EncryptedFileStore(link, key=generate_key(), follow_symlinks=True)
    await store.put("k", b"v", expected_version=None)
    assert 1 == len(list(target.rglob("*.tok")))


@posix_only
@pytest.mark.parametrize("follow_symlinks", [False, True])
async def test_shared_target_of_a_symlink_is_never_tightened(
    tmp_path: Path, follow_symlinks: bool
) -> None:
    """A link to a shared 1777 folder is refused, and the shared folder keeps its mode."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    link = tmp_path / "link"
    link.symlink_to(shared)
    store = EncryptedFileStore(link, key=generate_key(), follow_symlinks=follow_symlinks)
    with pytest.raises(StoreError):
        await store.put("k", b"v", expected_version=None)
    assert 0o1777 == mode(shared)
    assert [] == list(shared.iterdir())


def damage_flip(path: Path) -> None:
    """Flip one bit in the middle of the file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    """Cut the file in half."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_empty(path: Path) -> None:
    """Leave an empty file (what a crash during a non-atomic write leaves)."""
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_empty])
async def test_damaged_file_raises_and_stays(tmp_path: Path, damage: object) -> None:
    """A damaged record raises DecryptionError on get, put and delete-at-version; it stays as is."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    await store.put("tenant-b", b"token", expected_version=None)
    path = record_file(tmp_path)
    damage(path)  # type: ignore[operator]
    before = snapshot(path)
    for attempt in (
        store.get("tenant-b"),
        store.put("tenant-b", b"new", expected_version=1),
        store.put("tenant-b", b"new", expected_version=None),
        store.delete("tenant-b", expected_version=1),
    ):
        with pytest.raises(DecryptionError, match="wrong key or tampered data") as caught:
            await attempt
        assert "'tenant-b'" in str(caught.value)
    assert before == snapshot(path)


async def test_wrong_key_raises_and_leaves_file(tmp_path: Path) -> None:
    """Opening a folder with the wrong key raises DecryptionError and changes nothing."""
    right, wrong = generate_key(), generate_key()
    await EncryptedFileStore(tmp_path / "s", key=right).put("k", b"token", expected_version=None)
    store = EncryptedFileStore(tmp_path / "s", key=wrong)
    path = record_file(tmp_path)
    before = snapshot(path)
    with pytest.raises(DecryptionError) as caught:
        await store.get("k")
    with pytest.raises(DecryptionError):
        await store.put("k", b"overwrite", expected_version=1)
    assert before == snapshot(path)
    assert right not in str(caught.value)
    assert wrong not in str(caught.value)
    assert Versioned(b"token", 1) == await EncryptedFileStore(tmp_path / "s", key=right).get("k")


async def test_file_copied_over_another_tenant_fails(tmp_path: Path) -> None:
    """Tenant A's file copied over tenant B's does not decrypt as B's (and stays as copied)."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    a_path = await put_new(store, "tenant-a", b"token of A")
    b_path = await put_new(store, "tenant-b", b"token of B")
    b_path.write_bytes(a_path.read_bytes())
    before = snapshot(b_path)
    with pytest.raises(DecryptionError, match="tenant-b"):
        await store.get("tenant-b")
    assert before == snapshot(b_path)
    assert Versioned(b"token of A", 1) == await store.get("tenant-a")


async def test_unconditional_delete_discards_unreadable_record(tmp_path: Path) -> None:
    """delete(key) without a version is how a user discards a record that cannot be read."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    await store.put("k", b"token", expected_version=None)
    damage_flip(record_file(tmp_path))
    assert True is await store.delete("k")
    assert 1 == await store.put("k", b"fresh", expected_version=None)


async def test_expired_record_is_absent_and_replaceable(tmp_path: Path) -> None:
    """An expired record reads as None, deletes as absent, and can be created again."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    await store.put("k", b"a", expected_version=None, ttl=0.05)
    await anyio.sleep(0.1)
    assert None is await store.get("k")
    assert False is await store.delete("k")
    assert 1 == await store.put("k", b"b", expected_version=None)


async def test_stray_temp_file_does_not_block_writes(tmp_path: Path) -> None:
    """A .tmp left by a killed writer (any content) is overwritten by the next write."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    await store.put("k", b"a", expected_version=None)
    record = record_file(tmp_path)
    temp = record.with_suffix(".tmp")
    temp.write_bytes(b"half a record")
    temp.chmod(0o600)
    assert 2 == await store.put("k", b"b", expected_version=1)
    assert Versioned(b"b", 2) == await store.get("k")
    assert not temp.exists()


async def test_two_stores_on_one_folder_share_versions(tmp_path: Path) -> None:
    """Two store objects on one folder see each other's writes and conflicts."""
    key = generate_key()
    one = EncryptedFileStore(tmp_path / "s", key=key)
    two = EncryptedFileStore(tmp_path / "s", key=key)
    await one.put("k", b"a", expected_version=None)
    await two.put("k", b"b", expected_version=1)
    with pytest.raises(ConflictError):
        await one.put("k", b"stale", expected_version=1)
    assert Versioned(b"b", 2) == await one.get("k")


async def test_namespaces_do_not_mix(tmp_path: Path) -> None:
    """Two namespaces in one folder keep separate records."""
    key = generate_key()
    one = EncryptedFileStore(tmp_path / "s", key=key, namespace="app-one")
    two = EncryptedFileStore(tmp_path / "s", key=key, namespace="app-two")
    await one.put("k", b"one", expected_version=None)
    assert None is await two.get("k")


async def test_passphrase_salt_lives_beside_the_data(tmp_path: Path) -> None:
    """A passphrase store writes kdf.json once; the same passphrase reads, another does not."""
    key = Passphrase("correct horse battery staple", work_factor=2**10)
    await EncryptedFileStore(tmp_path / "s", key=key).put("k", b"v", expected_version=None)
    params = (tmp_path / "s" / "kdf.json").read_bytes()
    assert b"correct horse" not in params
    assert Versioned(b"v", 1) == await EncryptedFileStore(tmp_path / "s", key=key).get("k")
    assert params == (tmp_path / "s" / "kdf.json").read_bytes()
    wrong = EncryptedFileStore(tmp_path / "s", key=Passphrase("wrong", work_factor=2**10))
    with pytest.raises(DecryptionError):
        await wrong.get("k")


def plant(path: Path, **changes: object) -> bytes:
    """Rewrite the kdf.json at ``path`` with ``changes`` (as someone with write access could)."""
    doc = json.loads(path.read_bytes())
    doc.update(changes)
    planted = json.dumps(doc).encode()
    path.write_bytes(planted)
    return planted


@pytest.mark.parametrize(
    ("changes", "reason"),
    [({"n": 2}, "n=2 is not"), ({"n": 2**40}, "n=1099511627776"), ({"r": 1}, "r=1 is not")],
)
async def test_planted_kdf_params_out_of_bounds_are_refused(
    tmp_path: Path, changes: dict[str, object], reason: str
) -> None:
    """kdf.json with n=2 (cheap guessing) or n=2**40 (memory) is refused; nothing is written."""
    key = Passphrase("correct horse battery staple", work_factor=2**10)
    await EncryptedFileStore(tmp_path / "s", key=key).put("k", b"v", expected_version=None)
    planted = plant(tmp_path / "s" / "kdf.json", **changes)
    before = {name: snapshot(path) for name, path in files(tmp_path / "s").items()}
    store = EncryptedFileStore(tmp_path / "s", key=key)
    with pytest.raises(KeyDerivationError, match=reason):
        await store.put("new", b"under a weak key", expected_version=None)
    with pytest.raises(KeyDerivationError):
        await store.get("k")
    assert before == {name: snapshot(path) for name, path in files(tmp_path / "s").items()}
    assert planted == (tmp_path / "s" / "kdf.json").read_bytes()


async def test_swapped_kdf_params_are_detected(tmp_path: Path) -> None:
    """kdf.json replaced within the bounds (new salt, lower n) fails its key check: no writes."""
    key = Passphrase("correct horse battery staple", work_factor=2**11)
    await EncryptedFileStore(tmp_path / "s", key=key).put("k", b"v", expected_version=None)
    plant(tmp_path / "s" / "kdf.json", n=2**10, salt=base64.b64encode(b"x" * 16).decode())
    records = set((tmp_path / "s").rglob("*.tok"))
    with pytest.raises(DecryptionError, match="key check"):
        await EncryptedFileStore(tmp_path / "s", key=key).put("new", b"v", expected_version=None)
    assert records == set((tmp_path / "s").rglob("*.tok"))


async def test_kdf_params_planted_before_first_use_are_detected(tmp_path: Path) -> None:
    """Parameters planted in an empty store (checked with another passphrase) are refused."""
    planter = EncryptedFileStore(tmp_path / "s", key=Passphrase("attacker", work_factor=2**10))
    await planter.get("k")  # writes kdf.json only
    assert ["kdf.json", "kdf.lock"] == sorted(files(tmp_path / "s"))
    victim = EncryptedFileStore(tmp_path / "s", key=Passphrase("victim", work_factor=2**15))
    with pytest.raises(DecryptionError, match="key check"):
        await victim.put("k", b"token", expected_version=None)
    assert [] == list((tmp_path / "s").rglob("*.tok"))


async def test_rotating_to_a_new_passphrase_moves_the_key_check(tmp_path: Path) -> None:
    """After rotate() with the new passphrase first, the old passphrase can be dropped."""
    old = Passphrase("old passphrase", work_factor=2**10)
    new = Passphrase("new passphrase", work_factor=2**10)
    await EncryptedFileStore(tmp_path / "s", key=old).put("k", b"v", expected_version=None)
    assert 1 == await EncryptedFileStore(tmp_path / "s", key=KeySet(new, old)).rotate()
    assert Versioned(b"v", 1) == await EncryptedFileStore(tmp_path / "s", key=new).get("k")
    with pytest.raises(DecryptionError):
        await EncryptedFileStore(tmp_path / "s", key=old).get("k")


async def test_rotate_reencrypts_with_newest_key(tmp_path: Path) -> None:
    """rotate() moves every record to the newest key, keeping values and versions."""
    old, new = generate_key(), generate_key()
    before = EncryptedFileStore(tmp_path / "s", key=old)
    for i in range(5):
        await before.put(f"k{i}", b"v%d" % i, expected_version=None)
    await before.put("k0", b"v0b", expected_version=1)
    rotating = EncryptedFileStore(tmp_path / "s", key=KeySet(new, old))
    await rotating.put("k4", b"v4b", expected_version=1)  # already under the new key
    assert 4 == await rotating.rotate()
    assert 0 == await rotating.rotate()
    after = EncryptedFileStore(tmp_path / "s", key=new)
    got = [await after.get(f"k{i}") for i in range(5)]
    expected = [Versioned(b"v0b", 2), *(Versioned(b"v%d" % i, 1) for i in range(1, 4))]
    assert [*expected, Versioned(b"v4b", 2)] == got


async def test_rotate_reports_unreadable_records_and_does_the_rest(tmp_path: Path) -> None:
    """An unreadable record is left alone and reported after the others are rotated."""
    old, new = generate_key(), generate_key()
    before = EncryptedFileStore(tmp_path / "s", key=old)
    await before.put("good", b"v", expected_version=None)
    bad = await put_new(before, "bad", b"v")
    damage_flip(bad)
    snap = snapshot(bad)
    with pytest.raises(DecryptionError, match="1 record"):
        await EncryptedFileStore(tmp_path / "s", key=KeySet(new, old)).rotate()
    assert snap == snapshot(bad)
    assert Versioned(b"v", 1) == await EncryptedFileStore(tmp_path / "s", key=new).get("good")


async def test_path_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    """An unusable folder gives a StoreError, not an OSError."""
    (tmp_path / "file").write_bytes(b"")
    store = EncryptedFileStore(tmp_path / "file", key=generate_key())
    with pytest.raises(StoreError, match="file store"):
        await store.get("k")


def test_repr_shows_path_not_key(tmp_path: Path) -> None:
    """repr names the folder and namespace, never the key."""
    key = generate_key()
    text = repr(EncryptedFileStore(tmp_path, key=key, namespace="ns"))
    assert str(tmp_path) in text
    assert key not in text
