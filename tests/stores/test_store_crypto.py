"""Keys and the envelope format (deviceflow._crypto), including property tests on tampering."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceflow._crypto import KdfParams, Payload, Sealer
from deviceflow.exceptions import DecryptionError, KeyDerivationError, StoreError
from deviceflow.stores import KeySet, Passphrase, generate_key
from strategies import payloads

RAW = bytes(range(32))
OTHER = bytes(range(1, 33))
FAST = 2**10  # a scrypt cost small enough for tests; the default is 2**15


def sealer(*keys: str | bytes | Passphrase, namespace: str = "ns") -> Sealer:
    """A Sealer over ``keys`` (passphrases derived with a fixed salt)."""
    params = KdfParams(salt=b"s" * 16, n=FAST)
    return Sealer(KeySet(*keys).resolve(params), namespace)


def test_generate_key_is_urlsafe_base64_of_32_bytes() -> None:
    """generate_key gives 44 URL-safe base64 characters for 32 bytes, fresh each time."""
    key = generate_key()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}=", key)
    assert 32 == len(base64.urlsafe_b64decode(key))
    assert key != generate_key()


@pytest.mark.parametrize(
    "spelling",
    [
        RAW,
        base64.b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),
        " " + base64.b64encode(RAW).decode() + "\n",
    ],
)
def test_key_spellings_are_one_key(spelling: str | bytes) -> None:
    """Raw bytes and standard, URL-safe, unpadded or padded-with-space base64 are the same key."""
    envelope = sealer(RAW).seal("r", Payload(1, None, b"token"))
    assert b"token" == sealer(spelling).open("r", envelope, name="k").value


@pytest.mark.parametrize(
    ("material", "error"),
    [
        (b"short", ValueError),
        (base64.b64encode(b"x" * 31).decode(), ValueError),
        ("not base64 at all!", ValueError),
        (42, TypeError),
    ],
)
def test_bad_key_material_is_refused(material: object, error: type[Exception]) -> None:
    """Keys of the wrong length, type or encoding raise, without echoing the material."""
    with pytest.raises(error) as caught:
        KeySet(material)  # type: ignore[arg-type]
    assert str(material) not in str(caught.value)


def test_keyset_needs_a_key() -> None:
    """An empty KeySet is refused."""
    with pytest.raises(ValueError, match="at least one"):
        KeySet()


def test_keyset_repr_shows_no_key() -> None:
    """repr(KeySet) and repr(Passphrase) show counts, never material."""
    key = generate_key()
    assert "KeySet(<2 keys>)" == repr(KeySet(key, RAW))
    assert "KeySet(<1 key>)" == repr(KeySet.coerce(key))
    assert "hunter2" not in repr(Passphrase("hunter2"))


def test_rotation_old_keys_decrypt_newest_encrypts() -> None:
    """KeySet(new, old) opens old records and seals with new only."""
    old_envelope = sealer(OTHER).seal("r", Payload(1, None, b"old"))
    rotated = sealer(RAW, OTHER)
    assert b"old" == rotated.open("r", old_envelope, name="k").value
    assert False is rotated.is_current(old_envelope)
    new_envelope = rotated.seal("r", Payload(2, None, b"new"))
    assert True is rotated.is_current(new_envelope)
    assert b"new" == sealer(RAW).open("r", new_envelope, name="k").value
    with pytest.raises(DecryptionError):
        sealer(OTHER).open("r", new_envelope, name="k")


def test_passphrase_keys_depend_on_salt() -> None:
    """A passphrase gives the same key for the same salt and another for another salt."""
    envelope = sealer(Passphrase("correct horse")).seal("r", Payload(1, None, b"v"))
    assert b"v" == sealer(Passphrase("correct horse")).open("r", envelope, name="k").value
    other_salt = Sealer(
        KeySet(Passphrase("correct horse")).resolve(KdfParams(salt=b"t" * 16, n=FAST)), "ns"
    )
    with pytest.raises(DecryptionError):
        other_salt.open("r", envelope, name="k")
    with pytest.raises(DecryptionError):
        sealer(Passphrase("wrong horse")).open("r", envelope, name="k")


@pytest.mark.parametrize(
    ("secret", "cost"), [("", 2**15), ("pw", 2**9), ("pw", 3 * 2**10), ("pw", 2**21)]
)
def test_bad_passphrase_settings_are_refused(secret: str, cost: int) -> None:
    """An empty passphrase, or a scrypt cost out of bounds or not a power of two, is refused."""
    with pytest.raises(ValueError, match=r"secret|work_factor"):
        Passphrase(secret, work_factor=cost)


def test_passphrase_needs_kdf_params() -> None:
    """Resolving a passphrase without the store's salt is a programming error."""
    keys = KeySet(RAW, Passphrase("pw", work_factor=FAST))
    assert (True, FAST) == (keys.needs_kdf, keys.work_factor)
    with pytest.raises(ValueError, match="scrypt"):
        keys.resolve(None)


def test_kdf_params_round_trip_and_damage() -> None:
    """KDF parameters survive JSON, and damaged JSON is a KeyDerivationError."""
    params = KeySet(Passphrase("pw", work_factor=FAST)).new_kdf_params()
    assert params == KdfParams.from_json(params.to_json())
    for damaged in (
        b"{",
        b"{}",
        b'{"kdf": "argon2"}',
        b'{"kdf":"scrypt","salt":"!","n":1}',
        b'{"kdf":"scrypt","salt":"c2FsdHNhbHRzYWx0c2FsdA==","n":"1024","r":8,"p":1,"check":""}',
        b'{"kdf":"scrypt","salt":"c2FsdHNhbHRzYWx0c2FsdA==","n":1024.0,"r":8,"p":1,"check":""}',
        b'{"kdf":"scrypt","salt":"c2FsdHNhbHRzYWx0c2FsdA==","n":1024,"r":8,"p":1,"check":"!"}',
    ):
        with pytest.raises(KeyDerivationError, match="damaged"):
            KdfParams.from_json(damaged)


def stored(params: KdfParams, **changes: object) -> bytes:
    """``params`` as stored, with ``changes`` written over the JSON (a planted document)."""
    doc = json.loads(params.to_json())
    doc.update(changes)
    return json.dumps(doc).encode()


GOOD = KeySet(Passphrase("pw", work_factor=FAST)).new_kdf_params()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"n": 2}, "n=2 is not"),
        ({"n": 2**9}, "n=512 is not"),
        ({"n": 3 * 2**10}, "n=3072 is not"),
        ({"n": 2**40}, "n=1099511627776 is not"),
        ({"n": 2**21}, "n=2097152 is not"),
        ({"n": 2**20, "r": 16}, "needs more than 1 GiB"),
        ({"r": 1}, "r=1 is not"),
        ({"r": 10**9}, "r=1000000000 is not"),
        ({"p": 0}, "p=0 is not"),
        ({"p": 1000}, "p=1000 is not"),
        ({"salt": base64.b64encode(b"s" * 4).decode()}, "salt of 4 bytes"),
        ({"salt": ""}, "salt of 0 bytes"),
    ],
)
def test_kdf_params_outside_the_bounds_are_refused(changes: dict[str, object], reason: str) -> None:
    """Stored scrypt parameters below the floor or above the ceiling are refused, saying why."""
    with pytest.raises(KeyDerivationError, match=reason):
        KdfParams.from_json(stored(GOOD, **changes))


def test_huge_kdf_params_are_refused_before_any_derivation() -> None:
    """n=2**40 is a KeyDerivationError at once, not a MemoryError from scrypt."""
    huge = KdfParams(salt=b"s" * 16, n=2**40, check=b"c" * 32)
    with pytest.raises(KeyDerivationError, match="outside deviceflow's bounds"):
        KeySet(Passphrase("pw")).resolve(huge)


def test_kdf_params_without_a_key_check_are_refused() -> None:
    """A document without a key check (removed, or never made) cannot be trusted."""
    doc = json.loads(GOOD.to_json())
    del doc["check"]
    for unchecked in (json.dumps(doc).encode(), KdfParams.new(FAST).to_json()):
        with pytest.raises(KeyDerivationError, match="no key check"):
            KdfParams.from_json(unchecked)


def test_changed_kdf_params_fail_their_key_check() -> None:
    """Parameters changed within the bounds (a new salt, a smaller n) fail the key check."""
    keys = KeySet(Passphrase("pw", work_factor=2**11))
    params = keys.new_kdf_params()
    assert len(keys.resolve(params)) == 1
    for changes in ({"n": FAST}, {"salt": base64.b64encode(b"t" * 16).decode()}, {"r": 9}):
        with pytest.raises(DecryptionError, match="key check"):
            keys.resolve(KdfParams.from_json(stored(params, **changes)))
    with pytest.raises(DecryptionError, match="key check"):
        KeySet(Passphrase("wrong", work_factor=2**11)).resolve(params)


def test_any_passphrase_of_the_set_may_match_the_key_check() -> None:
    """A set mid-rotation (new passphrase first) accepts the check made by the old one."""
    params = KeySet(Passphrase("old", work_factor=FAST)).new_kdf_params()
    rotating = KeySet(Passphrase("new", work_factor=FAST), Passphrase("old", work_factor=FAST))
    assert 2 == len(rotating.resolve(params))
    rechecked = rotating.rechecked(params)
    assert rechecked is not None
    assert 1 == len(KeySet(Passphrase("new", work_factor=FAST)).resolve(rechecked))
    assert None is rotating.rechecked(rechecked)


def test_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env reads comma- or space-separated base64 keys, newest first."""
    new, old = generate_key(), generate_key()
    monkeypatch.setenv("DEVICEFLOW_KEY", f"{new}, {old}")
    envelope = sealer(old).seal("r", Payload(1, None, b"v"))
    keys = KeySet.from_env()
    assert "KeySet(<2 keys>)" == repr(keys)
    assert b"v" == Sealer(keys.resolve(), "ns").open("r", envelope, name="k").value


@pytest.mark.parametrize("value", [None, "", "  ", "zzzz"])
def test_keys_from_env_missing_or_bad(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """A missing, empty or malformed variable is a StoreError naming the variable."""
    if value is None:
        monkeypatch.delenv("MY_KEY", raising=False)
    else:
        monkeypatch.setenv("MY_KEY", value)
    with pytest.raises(StoreError, match="MY_KEY"):
        KeySet.from_env("MY_KEY")


def _key_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_keys_from_private_file(tmp_path: Path) -> None:
    """from_file reads one key per line, skipping blanks and comments."""
    key = generate_key()
    path = _key_file(tmp_path, f"# deviceflow key\n\n{key}  # current\n", 0o600)
    envelope = sealer(key).seal("r", Payload(1, None, b"v"))
    keys = KeySet.from_file(path)
    assert b"v" == Sealer(keys.resolve(), "ns").open("r", envelope, name="k").value


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A key file open to group or others is refused with the chmod to run."""
    key = generate_key()
    path = _key_file(tmp_path, key, mode)
    with pytest.raises(StoreError, match="chmod 600") as caught:
        KeySet.from_file(path)
    assert key not in str(caught.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "not-a-key\n"])
def test_key_file_without_a_key_is_refused(tmp_path: Path, text: str) -> None:
    """An empty or malformed key file is a StoreError naming the file."""
    path = _key_file(tmp_path, text, 0o600)
    with pytest.raises(StoreError, match="key file"):
        KeySet.from_file(path)


def test_missing_key_file_is_a_store_error(tmp_path: Path) -> None:
    """A key file that does not exist is a StoreError."""
    with pytest.raises(StoreError, match="cannot read key file"):
        KeySet.from_file(tmp_path / "absent")


def test_record_ids_are_opaque_and_namespaced() -> None:
    """Record ids are 32 hex digits, stable, and differ by key and by namespace."""
    a, b = sealer(RAW, namespace="one"), sealer(RAW, namespace="two")
    assert re.fullmatch("[0-9a-f]{32}", a.record_id("tenant"))
    assert a.record_id("tenant") == sealer(OTHER, namespace="one").record_id("tenant")
    assert a.record_id("tenant") != a.record_id("tenant2")
    assert a.record_id("tenant") != b.record_id("tenant")


def test_every_write_uses_a_fresh_nonce() -> None:
    """Sealing the same record twice gives two different envelopes."""
    s = sealer(RAW)
    record = Payload(1, None, b"same")
    assert s.seal("r", record) != s.seal("r", record)


@given(record=payloads)
def test_envelope_round_trips(record: Payload) -> None:
    """Any record opens to itself."""
    s = sealer(RAW)
    assert record == s.open("r", s.seal("r", record), name="k")


@given(record=payloads, data=st.data())
def test_any_flipped_bit_is_detected(record: Payload, data: st.DataObject) -> None:
    """Flipping any bit of an envelope makes it fail to open with DecryptionError."""
    s = sealer(RAW)
    envelope = bytearray(s.seal("r", record))
    index = data.draw(st.integers(0, len(envelope) - 1))
    envelope[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(DecryptionError, match="wrong key or tampered data"):
        s.open("r", bytes(envelope), name="'k'")


@given(record=payloads, data=st.data())
def test_truncation_or_extension_is_detected(record: Payload, data: st.DataObject) -> None:
    """A cut or lengthened envelope fails to open with DecryptionError."""
    s = sealer(RAW)
    envelope = s.seal("r", record)
    cut = envelope[: data.draw(st.integers(0, len(envelope) - 1))]
    longer = envelope + data.draw(st.binary(min_size=1, max_size=64))
    for damaged in (cut, longer):
        with pytest.raises(DecryptionError):
            s.open("r", damaged, name="k")


@given(record=payloads, other=st.text(min_size=1).filter(lambda k: k != "tenant-a"))
def test_envelope_is_bound_to_its_key(record: Payload, other: str) -> None:
    """An envelope sealed for one key does not open as another key's."""
    s = sealer(RAW)
    envelope = s.seal(s.record_id("tenant-a"), record)
    with pytest.raises(DecryptionError):
        s.open(s.record_id(other), envelope, name=repr(other))


@given(record=payloads)
def test_envelope_is_bound_to_its_namespace(record: Payload) -> None:
    """The same key in another namespace does not open it."""
    envelope = sealer(RAW, namespace="a").seal("r", record)
    with pytest.raises(DecryptionError):
        sealer(RAW, namespace="b").open("r", envelope, name="k")


@given(record=payloads, data=st.binary(max_size=200))
@settings(max_examples=50)
def test_garbage_never_opens(record: Payload, data: bytes) -> None:
    """Arbitrary bytes are a DecryptionError, never another exception."""
    with pytest.raises(DecryptionError):
        sealer(RAW).open("r", data, name="k")


def test_stored_version_must_match_sealed_version() -> None:
    """A version kept beside the envelope that differs from the sealed one is tampering."""
    s = sealer(RAW)
    envelope = s.seal("r", Payload(3, None, b"v"))
    assert 3 == s.open("r", envelope, name="k", version=3).version
    with pytest.raises(DecryptionError):
        s.open("r", envelope, name="k", version=4)


def test_decryption_error_names_the_record_not_the_key() -> None:
    """The message names the record, says what went wrong and holds no key material."""
    key = generate_key()
    envelope = sealer(key).seal("r", Payload(1, None, b"secret-token"))
    with pytest.raises(DecryptionError) as caught:
        sealer(RAW).open("r", envelope, name="'tenant-42'")
    message = str(caught.value)
    assert "wrong key or tampered data" in message
    assert "'tenant-42'" in message
    for secret in (key, RAW.hex(), repr(RAW), "secret-token"):
        assert secret not in message
    assert os.fsencode(key) not in message.encode()
