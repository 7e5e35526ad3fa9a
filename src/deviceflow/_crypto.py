"""Keys and the one envelope format both persistent stores use.

Theory of operation
-------------------
A stored record is the token bytes plus its version and expiry, sealed with AES-256-GCM::

    envelope  = header || nonce (12) || ciphertext || tag (16)
    header    = b"DF" || format (1 byte, = 1) || key id (4 bytes)
    plaintext = version (u64, big endian) || expires_at (f64 unix time, 0 = never) || value
    AAD       = header || len(namespace) (u32) || namespace || record id

The nonce is 96 random bits, fresh for every write. The record id is a hash of the store's
namespace and the record's key; with the namespace itself it binds each envelope to one key of one
namespace, so a value copied onto another key, or into another namespace, fails to decrypt, as
does any change to the header (the key id included). The key id names the
key that sealed the record: a :class:`KeySet` encrypts with its first key and decrypts with any
of them, which is how keys rotate.

Every failure to open an envelope (wrong key, unknown key id, a flipped bit, truncation, a record
moved to another key) is one :class:`~deviceflow.exceptions.DecryptionError` whose message says
"wrong key or tampered data", names the record, and never includes key material. cryptography's
exceptions stop here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import Union

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .exceptions import DecryptionError, KeyDerivationError, StoreError

__all__ = [
    "DEFAULT_KEY_ENV",
    "KDF_MAX_MEMORY",
    "KDF_MAX_N",
    "KDF_MIN_N",
    "KDF_P_RANGE",
    "KDF_R_RANGE",
    "KDF_SALT_RANGE",
    "KdfParams",
    "KeyMaterial",
    "KeySet",
    "Passphrase",
    "Payload",
    "Sealer",
    "generate_key",
    "key_arg",
]

#: The environment variable :meth:`KeySet.from_env` reads by default.
DEFAULT_KEY_ENV = "DEVICEFLOW_KEY"

_MAGIC = b"DF"
_FORMAT = 1
_HEADER = struct.Struct(">2sB4s")
_META = struct.Struct(">Qd")
_NONCE_LEN = 12
_TAG_LEN = 16
_KEY_LEN = 32
_MIN_ENVELOPE = _HEADER.size + _NONCE_LEN + _TAG_LEN + _META.size

#: The bounds on scrypt parameters: a Passphrase's work_factor, and the parameters a store reads
#: back from beside its data (where anyone who can write there could change them). Below the
#: floor a guess at the passphrase is cheap; above the ceiling one derivation takes gigabytes of
#: memory or many seconds. n is a power of two in [KDF_MIN_N, KDF_MAX_N], r in [8, 16], p in
#: [1, 4], the memory scrypt needs (128 * n * r bytes) at most 1 GiB, and the salt 16-64 bytes.
KDF_MIN_N = 2**10
KDF_MAX_N = 2**20
KDF_R_RANGE = (8, 16)
KDF_P_RANGE = (1, 4)
KDF_MAX_MEMORY = 2**30
KDF_SALT_RANGE = (16, 64)
_KDF_CHECK = b"deviceflow kdf check\0"


def generate_key() -> str:
    """A new random key for the encrypted stores: base64 (URL-safe) of 32 random bytes.

    >>> len(generate_key())
    44
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(_KEY_LEN)).decode("ascii")


def _decode_key(material: str | bytes) -> bytes:
    if isinstance(material, bytes):
        raw = material
    elif isinstance(material, str):
        text = "".join(material.split()).replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a key string must be base64 (see generate_key())") from None
    else:
        raise TypeError(f"a key is 32 bytes or a base64 string, not {type(material).__name__}")
    if len(raw) != _KEY_LEN:
        raise ValueError(f"a key must be exactly {_KEY_LEN} bytes (got {len(raw)})")
    return raw


def _key_id(raw: bytes) -> bytes:
    # A one-way tag of the key: it tells keys apart without revealing anything about them.
    return hmac.new(raw, b"deviceflow key id", hashlib.sha256).digest()[:4]


@attrs.frozen
class Passphrase:
    """A key derived from a passphrase with scrypt.

    The salt and the scrypt parameters are kept beside the data (a ``kdf.json`` file in the
    folder of an :class:`~deviceflow.stores.EncryptedFileStore`, a key in Redis for a
    :class:`~deviceflow.stores.RedisStore`): lose them and the data cannot be decrypted.
    ``work_factor`` (scrypt's ``n``, a power of two from 2**10 to 2**20) applies when the salt is
    first created.

    The stored parameters carry a key check: an HMAC, under the key derived from them, of the
    parameters themselves. A store refuses parameters outside the bounds (n a power of two from
    2**10 to 2**20, r 8-16, p 1-4, at most 1 GiB of memory, a 16-64 byte salt) with
    :class:`~deviceflow.exceptions.KeyDerivationError` before deriving anything, and parameters
    whose key check does not match the passphrase (changed, or a wrong passphrase) with
    :class:`~deviceflow.exceptions.DecryptionError`.
    """

    secret: str = attrs.field(repr=False)
    work_factor: int = attrs.field(default=2**15)

    @secret.validator
    def _check_secret(self, _: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str):
            raise TypeError(f"the passphrase secret must be a str, not {type(value).__name__}")
        if not value:
            raise ValueError("the passphrase secret must not be empty")

    @work_factor.validator
    def _check_work_factor(self, _: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"work_factor must be an int, not {type(value).__name__}")
        if not KDF_MIN_N <= value <= KDF_MAX_N or value & (value - 1):
            raise ValueError("work_factor must be a power of two from 2**10 to 2**20")

    def derive(self, params: KdfParams) -> bytes:
        """The 32-byte key for ``params`` (salt and scrypt costs), which must be in bounds."""
        params.check_bounds()
        kdf = Scrypt(salt=params.salt, length=_KEY_LEN, n=params.n, r=params.r, p=params.p)
        try:
            return kdf.derive(self.secret.encode("utf-8"))
        except MemoryError:  # OpenSSL could not get the memory scrypt asks for
            raise KeyDerivationError(
                f"scrypt with n={params.n}, r={params.r} needs more memory than is available"
            ) from None


@attrs.frozen(kw_only=True)
class KdfParams:
    """The salt and scrypt costs a :class:`Passphrase` is stretched with; not secret.

    ``check`` is the key check (see :class:`Passphrase`): None only for parameters that are
    never stored.
    """

    salt: bytes
    n: int
    r: int = 8
    p: int = 1
    check: bytes | None = None

    @classmethod
    def new(cls, n: int) -> KdfParams:
        """Fresh parameters with a random 16-byte salt (and no key check yet)."""
        return cls(salt=secrets.token_bytes(16), n=n)

    def check_bounds(self) -> None:
        """KeyDerivationError, saying which, when a parameter is outside the library's bounds."""
        problems = []
        if not KDF_MIN_N <= self.n <= KDF_MAX_N or self.n & (self.n - 1):
            problems.append(f"n={self.n} is not a power of two from 2**10 to 2**20")
        if not KDF_R_RANGE[0] <= self.r <= KDF_R_RANGE[1]:
            problems.append(f"r={self.r} is not from {KDF_R_RANGE[0]} to {KDF_R_RANGE[1]}")
        if not KDF_P_RANGE[0] <= self.p <= KDF_P_RANGE[1]:
            problems.append(f"p={self.p} is not from {KDF_P_RANGE[0]} to {KDF_P_RANGE[1]}")
        if 128 * self.n * self.r > KDF_MAX_MEMORY:
            problems.append(f"n={self.n} with r={self.r} needs more than 1 GiB")
        if not KDF_SALT_RANGE[0] <= len(self.salt) <= KDF_SALT_RANGE[1]:
            problems.append(f"a salt of {len(self.salt)} bytes is not 16 to 64")
        if problems:
            raise KeyDerivationError(
                "the stored scrypt parameters are outside deviceflow's bounds ("
                + "; ".join(problems)
                + "): weakened or damaged. Nothing was derived or written; restore them from a "
                "backup, or remove them together with the records they protect."
            )

    def _signed(self) -> bytes:
        doc = {"kdf": "scrypt", "salt": base64.b64encode(self.salt).decode(), "n": self.n}
        doc.update(r=self.r, p=self.p)
        return json.dumps(doc, sort_keys=True).encode()

    def key_check(self, raw: bytes) -> bytes:
        """The key check of these parameters for ``raw``, the key derived from them."""
        return hmac.new(raw, _KDF_CHECK + self._signed(), hashlib.sha256).digest()

    def to_json(self) -> bytes:
        """The parameters (and key check) as JSON, as stored beside the data."""
        if self.check is None:
            return self._signed()
        doc = json.loads(self._signed())
        doc["check"] = base64.b64encode(self.check).decode()
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> KdfParams:
        """The inverse of :meth:`to_json`; KeyDerivationError when the document is damaged,
        has no key check, or is outside the bounds (see :meth:`check_bounds`)."""
        try:
            doc = json.loads(data)
            if doc["kdf"] != "scrypt":
                raise ValueError(doc["kdf"])
            check = doc.get("check")
            params = cls(
                salt=base64.b64decode(doc["salt"], validate=True),
                n=_strict_int(doc["n"]),
                r=_strict_int(doc["r"]),
                p=_strict_int(doc["p"]),
                check=None if check is None else base64.b64decode(check, validate=True),
            )
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
            raise KeyDerivationError(
                "the stored scrypt parameters (kdf.json, or the kdf key in Redis) are damaged"
            ) from None
        if params.check is None:
            raise KeyDerivationError(
                "the stored scrypt parameters carry no key check, so a change to them could not "
                "be detected: they were written by an earlier deviceflow, or the check was "
                "removed. Nothing was derived or written."
            )
        params.check_bounds()
        return params


def _strict_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


@attrs.frozen
class _Key:
    kid: bytes
    aead: AESGCM = attrs.field(repr=False, eq=False)

    @property
    def header(self) -> bytes:
        """The envelope header of records this key seals."""
        return _HEADER.pack(_MAGIC, _FORMAT, self.kid)


def _resolved(raw: bytes) -> _Key:
    return _Key(_key_id(raw), AESGCM(raw))


#: What ``key=`` of the encrypted stores accepts.
KeyMaterial = Union[str, bytes, Passphrase, "KeySet"]


class KeySet:
    """The keys of an encrypted store: the first encrypts new writes, every one decrypts.

    Rotate by putting a new key first and keeping the old ones after it, then call the store's
    ``rotate()`` to re-encrypt what is stored; the old keys can then be dropped.

    Each key is 32 raw bytes, a base64 string (as :func:`generate_key` returns), or a
    :class:`Passphrase`.

    >>> new, old = generate_key(), generate_key()
    >>> KeySet(new, old)
    KeySet(<2 keys>)
    """

    __slots__ = ("_keys", "_passphrases")

    def __init__(self, *keys: str | bytes | Passphrase) -> None:
        if not keys:
            raise ValueError("a KeySet needs at least one key")
        self._keys: tuple[bytes | Passphrase, ...] = tuple(
            k if isinstance(k, Passphrase) else _decode_key(k) for k in keys
        )

    def __repr__(self) -> str:
        count = len(self._keys)
        return f"KeySet(<{count} key{'s' if count != 1 else ''}>)"

    @classmethod
    def coerce(cls, key: KeyMaterial) -> KeySet:
        """``key`` as a KeySet (a single key becomes a set of one)."""
        return key if isinstance(key, KeySet) else cls(key)

    @classmethod
    def from_env(cls, name: str = DEFAULT_KEY_ENV) -> KeySet:
        """Keys from an environment variable: base64 keys separated by commas, newest first."""
        value = os.environ.get(name)
        if not value or not value.strip():
            raise StoreError(f"environment variable {name} is not set (expected a base64 key)")
        try:
            return cls(*(part for part in value.replace(",", " ").split()))
        except ValueError as exc:
            raise StoreError(f"environment variable {name}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeySet:
        """Keys from a file: one base64 key per line, newest first; ``#`` starts a comment.

        On POSIX the file must not be readable or writable by group or others (``chmod 600``).
        """
        file = Path(path).expanduser()
        try:
            with file.open("rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
                    raise StoreError(
                        f"key file {file} is accessible by group or others "
                        f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {file}"
                    )
                text = handle.read().decode("utf-8")
        except OSError as exc:
            raise StoreError(f"cannot read key file {file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise StoreError(f"key file {file} is not text (expected base64 keys)") from None
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        keys = [line for line in lines if line]
        if not keys:
            raise StoreError(f"key file {file} holds no key")
        try:
            return cls(*keys)
        except ValueError as exc:
            raise StoreError(f"key file {file}: {exc}") from None

    @property
    def needs_kdf(self) -> bool:
        """True when a key is a passphrase, so the store must supply :class:`KdfParams`."""
        return any(isinstance(k, Passphrase) for k in self._keys)

    @property
    def work_factor(self) -> int:
        """The scrypt cost for new :class:`KdfParams` (that of the first passphrase)."""
        return next(k.work_factor for k in self._keys if isinstance(k, Passphrase))

    def resolve(self, params: KdfParams | None = None) -> tuple[_Key, ...]:
        """The usable keys, deriving passphrases with ``params``.

        When ``params`` has a key check, one of the passphrases must match it: otherwise the
        parameters were changed (or every passphrase is wrong) and DecryptionError is raised.
        """
        keys: list[_Key] = []
        derived: list[bytes] = []
        for key in self._keys:
            if isinstance(key, Passphrase):
                if params is None:
                    raise ValueError("a passphrase needs the store's scrypt parameters")
                derived.append(key.derive(params))
                keys.append(_resolved(derived[-1]))
            else:
                keys.append(_resolved(key))
        if params is not None and params.check is not None and derived:
            expected = params.check
            if not any(hmac.compare_digest(expected, params.key_check(raw)) for raw in derived):
                raise DecryptionError(
                    "the store's scrypt parameters do not match their key check for any of "
                    "the passphrases: a wrong passphrase, or the parameters were changed. "
                    "Nothing was written."
                )
        return tuple(keys)

    def new_kdf_params(self) -> KdfParams:
        """Fresh scrypt parameters with the key check of the first passphrase."""
        params = KdfParams.new(self.work_factor)
        return attrs.evolve(params, check=params.key_check(self._first_passphrase(params)))

    def _first_passphrase(self, params: KdfParams) -> bytes:
        first = next(k for k in self._keys if isinstance(k, Passphrase))
        return first.derive(params)

    def rechecked(self, params: KdfParams) -> KdfParams | None:
        """``params`` with the key check of the first passphrase, or None if they have it.

        After a rotation to a new passphrase, the check must be the new one's, so that the old
        passphrase can be dropped (stores call this from ``rotate()``).
        """
        check = params.key_check(self._first_passphrase(params))
        if params.check is not None and hmac.compare_digest(params.check, check):
            return None
        return attrs.evolve(params, check=check)


def key_arg(key: object) -> KeySet:
    """A store's ``key=`` argument as a KeySet; TypeError or ValueError naming ``key`` else."""
    if not isinstance(key, (str, bytes, Passphrase, KeySet)):
        raise TypeError(
            "key must be a key from generate_key() (str or 32 bytes), a Passphrase or a KeySet, "
            f"not {type(key).__name__}"
        )
    try:
        return KeySet.coerce(key)
    except ValueError as exc:
        raise ValueError(f"key: {exc}") from None


@attrs.frozen
class Payload:
    """What an envelope holds: the value, its version and its expiry (unix time or None)."""

    version: int
    expires_at: float | None
    value: bytes = attrs.field(repr=False)

    def expired(self, now: float) -> bool:
        """True when the record has an expiry and ``now`` is past it."""
        return self.expires_at is not None and self.expires_at <= now


#: How many record ids a Sealer remembers: a store computes one on every call.
_RECORD_IDS_KEPT = 4096


class Sealer:
    """Seals and opens records of one store namespace with a resolved key set."""

    __slots__ = ("_bound_namespace", "_by_id", "_header", "_keys", "_namespace", "_record_ids")

    def __init__(self, keys: tuple[_Key, ...], namespace: str) -> None:
        self._keys = keys
        self._namespace = namespace.encode("utf-8")
        self._bound_namespace = len(self._namespace).to_bytes(4, "big") + self._namespace
        self._header = keys[0].header  # of every envelope seal() makes
        self._by_id: dict[bytes, list[_Key]] = {}
        for key in keys:
            self._by_id.setdefault(key.kid, []).append(key)
        self._record_ids: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Sealer(namespace={self._namespace.decode()!r}, keys={len(self._keys)})"

    def _aad(self, header: bytes, record_id: str) -> bytes:
        return header + self._bound_namespace + record_id.encode("ascii")

    def record_id(self, key: str) -> str:
        """A stable, opaque name for ``key`` in this namespace (32 hex digits)."""
        known = self._record_ids.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256(b"deviceflow record\0")
        digest.update(self._bound_namespace)
        digest.update(key.encode("utf-8"))
        record_id = digest.hexdigest()[:32]
        if len(self._record_ids) >= _RECORD_IDS_KEPT:  # forget the oldest
            self._record_ids.pop(next(iter(self._record_ids)), None)
        self._record_ids[key] = record_id
        return record_id

    def seal(self, record_id: str, record: Payload) -> bytes:
        """The envelope of ``record`` under the newest key, bound to ``record_id``."""
        header = self._header
        plain = _META.pack(record.version, record.expires_at or 0.0) + record.value
        nonce = os.urandom(_NONCE_LEN)  # what secrets.token_bytes does, one call fewer
        sealed = self._keys[0].aead.encrypt(nonce, plain, self._aad(header, record_id))
        return b"".join((header, nonce, sealed))

    def open(
        self, record_id: str, envelope: bytes, *, name: str, version: int | None = None
    ) -> Payload:
        """The record in ``envelope``; DecryptionError (naming ``name``) when it cannot be.

        ``version``, when given, is the version stored beside the envelope: it must match the
        sealed one.
        """
        if len(envelope) >= _MIN_ENVELOPE:
            magic, fmt, kid = _HEADER.unpack_from(envelope)
            if magic == _MAGIC and fmt == _FORMAT:
                header = envelope[: _HEADER.size]
                nonce = envelope[_HEADER.size : _HEADER.size + _NONCE_LEN]
                body = envelope[_HEADER.size + _NONCE_LEN :]
                aad = self._aad(header, record_id)
                for key in self._by_id.get(kid, ()):
                    try:
                        plain = key.aead.decrypt(nonce, body, aad)
                    except InvalidTag:
                        continue
                    sealed, expires = _META.unpack_from(plain)
                    if version is None or version == sealed:
                        return Payload(sealed, expires or None, plain[_META.size :])
                    break
        raise DecryptionError(
            f"cannot decrypt the stored value of {name}: wrong key or tampered data. "
            "It was left as it is: check the key, restore the record, or delete it."
        )

    def is_current(self, envelope: bytes) -> bool:
        """True when ``envelope`` was sealed with the newest key (nothing for rotate() to do)."""
        return envelope[2 : _HEADER.size] == bytes([_FORMAT]) + self._keys[0].kid
