"""EncryptedFileStore: one encrypted file per key, safe across the processes of one machine.

Layout (every folder 0700, every file 0600; modes are applied where the OS has them, and only
to what the store creates)::

    <path>/kdf.json, kdf.lock       salt, scrypt costs, key check; only when a key is a Passphrase
    <path>/ab/<record id>.tok       the record (an envelope, see deviceflow._crypto)
    <path>/ab/<record id>.tmp       the next version while it is written (then renamed)
    <path>/ab/<record id>.wlock     held for the few milliseconds of a compare-and-set
    <path>/ab/<record id>.lock      held by lock(key, ...) for the lease

``ab`` is the first two digits of the record id, so no folder grows past a few thousand entries
and the cost of an update does not depend on how many tokens are stored.

A write takes the key's ``.wlock`` (filelock's ``lock_descriptor``: flock on POSIX, LockFileEx on
Windows: the same lock as filelock's FileLock, so that every version of this store excludes every
other), reads and decrypts the current record, compares versions, writes the ``.tmp`` file,
fsyncs it, renames it over the record and fsyncs the folder, all in one worker thread. A process
killed at any point leaves the old or the new record, never half of one; the ``.tmp`` it may
leave is overwritten by the next write of that key (only one writer at a time holds the key's
``.wlock``), so it never gets in the way. Lock files are never unlinked: unlinking a lock file
lets two processes lock two different inodes.

Meant for local disks: network file systems do not all honour flock, rename and fsync.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import filelock

from deviceflow._checks import flag, path_arg, positive_finite, printable_text
from deviceflow._crypto import KdfParams, KeyMaterial, Payload, Sealer, key_arg
from deviceflow.exceptions import ConflictError, DecryptionError, LockTimeoutError, StoreError

from ._leases import KeyedLocks, LocalLeases, check_lock_args, check_ttl
from ._protocol import Lease, Versioned

__all__ = ["EncryptedFileStore"]

_T = TypeVar("_T")

_BINARY = getattr(os, "O_BINARY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _BINARY | _NOFOLLOW
_LOCK_FLAGS = os.O_RDWR | _BINARY | _NOFOLLOW
_POSIX = os.name == "posix"


def _private_dir(path: Path) -> bool:
    """Create ``path`` with mode 0700 if it is missing; True if this call created it.

    Only a folder created here gets its mode set (mkdir's mode passes through the umask, which
    may take away owner bits): a folder that already exists is never changed.
    """
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return False
    if _POSIX and stat.S_IMODE(os.lstat(path).st_mode) != 0o700:
        os.chmod(path, 0o700)
    return True


def _private_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents, each 0700; the folders created, outermost first.

    ``Path.mkdir(parents=True)`` would create the parents with the umask's mode (0777 under
    umask 000). A symbolic link counts as existing, even a dangling one.
    """
    missing: list[Path] = []
    folder = path
    while not os.path.lexists(folder) and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return [folder for folder in reversed(missing) if _private_dir(folder)]


def _refuse_open_root(root: Path) -> None:
    """StoreError unless ``root`` is a folder that group and others cannot use (POSIX).

    The store never changes the mode of a folder it did not create: a folder shared on purpose
    (``/tmp``, a team folder) must not be turned private behind its owner's back.
    """
    info = os.stat(root)
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"file store {str(root)!r}: not a folder")
    mode = stat.S_IMODE(info.st_mode)
    if _POSIX and mode & 0o077:
        raise StoreError(
            f"file store {str(root)!r}: the folder is accessible by group or others "
            f"(mode {mode:04o}); use a private folder, or run: chmod 700 {root}"
        )


def _fsync_dir(path: str | Path) -> None:
    # A rename is durable only once the folder is synced; Windows has no directory handles
    # to fsync (its NTFS journal covers the rename).
    if not _POSIX:
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # pragma: no cover - file systems that cannot sync folders
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _patiently(operation: Callable[..., None], *paths: str | Path) -> None:
    """Run a rename or unlink; on Windows, retry while another process has the file open."""
    if os.name != "nt":
        operation(*paths)
        return
    # Windows refuses to replace or delete a file that a reader or an antivirus has open:
    # such holds are brief, so retry for a while.
    for _ in range(100):  # pragma: no cover - Windows only
        try:
            operation(*paths)
        except PermissionError:
            time.sleep(0.01)
        else:
            return
    operation(*paths)  # pragma: no cover - Windows only


def _write_file(path: str | Path, temp: str | Path, data: bytes) -> None:
    fd = os.open(temp, _WRITE_FLAGS, 0o600)
    try:
        rest = memoryview(data)
        while rest:  # a short write (a full disk) is followed by one that raises
            rest = rest[os.write(fd, rest) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _patiently(os.replace, temp, path)
    _fsync_dir(os.path.dirname(path))


def _read_file(path: str | Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | _BINARY)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _new_filelock(path: Path) -> filelock.BaseFileLock:
    # thread_local=False: the lock is taken in a worker thread and let go on the event loop.
    # preserve_lock_file=True: never unlink lock files (see the module docstring).
    return filelock.FileLock(path, mode=0o600, thread_local=False, preserve_lock_file=True)


def _open_lock_file(path: str) -> int:
    """A descriptor of the lock file ``path``, created (0600) if missing; the caller closes it.

    The lock itself is :func:`filelock.lock_descriptor` on this descriptor, the primitive under
    filelock's FileLock; FileLock also re-checks the path, its folder and the process on every
    acquisition, which cost as much as the rest of a compare-and-set's own work.
    """
    try:
        fd = os.open(path, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # the usual case; lock files are never unlinked
        return os.open(path, _LOCK_FLAGS)
    if _POSIX:  # pragma: no branch - the umask may have taken the owner's write bit away
        os.fchmod(fd, 0o600)
    return fd


def _try_lock(fd: int) -> bool:
    """Lock ``fd`` if nobody else holds its file's lock; never waits."""
    return filelock.lock_descriptor(fd, blocking=False)


class _HeldFile:
    """One acquisition of a lock file, released exactly once by whichever thread comes first.

    A cancelled waiter cannot know whether its last attempt, still running in a worker thread,
    got the lock: release() marks the acquisition abandoned, so that attempt lets go at once.
    ``locate`` gives the lock file's path (creating its folder); it runs in the worker thread.
    A descriptor is shared with release() only once it holds the lock: a failed attempt closes
    its own.
    """

    def __init__(self, locate: Callable[[], str]) -> None:
        self._locate = locate
        self._path: str | None = None
        self._fd: int | None = None
        self._mutex = threading.Lock()
        self._done = False

    def try_acquire(self) -> bool:
        """One attempt without waiting (runs in a worker thread)."""
        if self._path is None:
            self._path = self._locate()
        fd = _open_lock_file(self._path)
        try:
            if _try_lock(fd):
                with self._mutex:
                    if not self._done:
                        self._fd, fd = fd, -1  # release() closes it now
                        return True
                filelock.unlock_descriptor(fd)
            return False
        finally:
            if fd != -1:
                os.close(fd)

    def release(self) -> None:
        """Let go (if held) and refuse any later acquisition; never blocks."""
        with self._mutex:
            self._done = True
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                filelock.unlock_descriptor(fd)  # explicitly: a forked child may share fd
            finally:
                os.close(fd)


class EncryptedFileStore:
    """A :class:`~deviceflow.stores.TokenStore` of encrypted files in one folder.

    ``key`` is a key from :func:`~deviceflow.stores.generate_key` (the base64 string, or the 32
    raw bytes), a :class:`~deviceflow.stores.Passphrase`, or a :class:`~deviceflow.stores.KeySet`
    for rotation. ``namespace`` is bound into every record: records written under one namespace
    never decrypt under another. ``lock_timeout`` bounds the wait for another process's
    compare-and-set (held for milliseconds; a dead holder frees it at once).

    Every folder the store creates (``path`` and its missing parents included) is 0700. A
    ``path`` that already exists must be a folder that group and others cannot use (POSIX): the
    store refuses it otherwise, and never changes the mode of a folder it did not create. A
    ``path`` that is a symbolic link is refused unless ``follow_symlinks=True``.

    Locks and compare-and-set hold across the processes of one machine. Use a local disk: network
    file systems do not all honour the locks, renames and fsyncs the store relies on.

    A record that cannot be decrypted raises DecryptionError and stays on disk as it is;
    ``delete(key)`` without ``expected_version`` is the way to discard it.

    >>> from deviceflow.stores import generate_key
    >>> store = EncryptedFileStore("~/.local/share/deviceflow", key=generate_key())
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: KeyMaterial,
        namespace: str = "deviceflow",
        lock_timeout: float = 30.0,
        follow_symlinks: bool = False,
    ) -> None:
        try:
            self._root = Path(path_arg("path", path)).expanduser().absolute()
        except RuntimeError:  # "~user/...", and no such user or home folder
            raise ValueError("path starts with a ~ whose home folder is unknown") from None
        self._follow_symlinks = flag("follow_symlinks", follow_symlinks)
        self._keys = key_arg(key)
        self._namespace = printable_text("namespace", namespace)
        self._lock_timeout = positive_finite("lock_timeout", lock_timeout)
        self._sealer: Sealer | None = None
        self._setup_lock = anyio.Lock()
        self._prefix = os.path.join(self._root, "")  # of every shard folder's path
        self._shards: set[str] = set()
        self._writers = KeyedLocks()
        self._leases = LocalLeases()

    def __repr__(self) -> str:
        return f"EncryptedFileStore({str(self._root)!r}, namespace={self._namespace!r})"

    @property
    def path(self) -> Path:
        """The store's folder."""
        return self._root

    # -- set-up --------------------------------------------------------------------------------

    async def _ready(self) -> Sealer:
        if self._sealer is None:
            async with self._setup_lock:  # the first callers wait for one set-up
                if self._sealer is None:
                    self._sealer = await self._run(self._setup)
        return self._sealer

    def _setup(self) -> Sealer:
        if self._root.is_symlink() and not self._follow_symlinks:
            raise StoreError(
                f"file store {str(self._root)!r}: the folder is a symbolic link; give its "
                "target as the path, or pass follow_symlinks=True to use it as it is"
            )
        if self._root not in _private_dirs(self._root):
            _refuse_open_root(self._root)
        params = self._kdf_params() if self._keys.needs_kdf else None
        return Sealer(self._keys.resolve(params), self._namespace)

    def _kdf_params(self) -> KdfParams:
        path = self._root / "kdf.json"
        with _new_filelock(self._root / "kdf.lock"):
            stored = _read_file(path)
            if stored is None:
                stored = self._keys.new_kdf_params().to_json()
                _write_file(path, self._root / "kdf.json.tmp", stored)
        return KdfParams.from_json(stored)

    def _recheck_kdf(self) -> None:
        """After a rotation, bind the stored key check to the newest passphrase."""
        path = self._root / "kdf.json"
        with _new_filelock(self._root / "kdf.lock"):
            stored = _read_file(path)
            if stored is None:
                return
            rechecked = self._keys.rechecked(KdfParams.from_json(stored))
            if rechecked is not None:
                _write_file(path, self._root / "kdf.json.tmp", rechecked.to_json())

    def _folder(self, rid: str, *, create: bool = True) -> str:
        """The path of ``rid``'s shard folder, ending in a separator; created if asked."""
        shard = rid[:2]
        if create and shard not in self._shards:
            if _private_dir(self._root / shard):
                _fsync_dir(self._root)
            self._shards.add(shard)
        return f"{self._prefix}{shard}{os.sep}"

    async def _run(self, func: Callable[..., _T], *args: object) -> _T:
        try:
            return await anyio.to_thread.run_sync(func, *args)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise StoreError(f"file store {str(self._root)!r}: {reason}") from exc

    # -- records -------------------------------------------------------------------------------

    def _load(self, sealer: Sealer, rid: str, key: str) -> tuple[Payload | None, bool]:
        """The live record of ``key`` (None if absent or expired), and whether a file exists."""
        data = _read_file(f"{self._folder(rid, create=False)}{rid}.tok")
        if data is None:
            return None, False
        record = sealer.open(rid, data, name=repr(key))
        return (None if record.expired(time.time()) else record), True

    def _write_locked(self, rid: str, name: str, action: Callable[[], _T]) -> _T:
        fd = _open_lock_file(f"{self._folder(rid)}{rid}.wlock")
        try:
            if not _try_lock(fd):
                self._wait_for_write_lock(fd, name)
            try:
                return action()
            finally:
                filelock.unlock_descriptor(fd)  # explicitly: a forked child may share fd
        finally:
            os.close(fd)

    def _wait_for_write_lock(self, fd: int, name: str) -> None:
        # Held for the milliseconds of a compare-and-set: poll often at first.
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.001
        while not _try_lock(fd):
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeoutError(
                    f"another process held the write lock of {name} "
                    f"for more than {self._lock_timeout} s"
                )
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.05)

    def _store(self, rid: str, data: bytes) -> None:
        folder = self._folder(rid)
        _write_file(f"{folder}{rid}.tok", f"{folder}{rid}.tmp", data)

    def _get_sync(self, sealer: Sealer, rid: str, key: str) -> Versioned | None:
        record, _ = self._load(sealer, rid, key)
        return None if record is None else Versioned(record.value, record.version)

    def _put_sync(
        self,
        sealer: Sealer,
        rid: str,
        key: str,
        value: bytes,
        expected: int | None,
        ttl: float | None,
    ) -> int:
        def compare_and_set() -> int:
            record, _ = self._load(sealer, rid, key)
            current = None if record is None else record.version
            if current != expected:
                raise ConflictError(
                    f"{key!r} is at version {current}, not {expected}: re-read and retry"
                )
            version = (current or 0) + 1
            expires = None if ttl is None else time.time() + ttl
            self._store(rid, sealer.seal(rid, Payload(version, expires, value)))
            return version

        return self._write_locked(rid, repr(key), compare_and_set)

    def _delete_sync(self, sealer: Sealer, rid: str, key: str, expected: int | None) -> bool:
        def compare_and_delete() -> bool:
            try:
                record, exists = self._load(sealer, rid, key)
            except DecryptionError:
                if expected is not None:
                    raise
                live = exists = True  # an unconditional delete discards an unreadable record
            else:
                live = record is not None
                if record is not None and expected not in (None, record.version):
                    raise ConflictError(
                        f"{key!r} is at version {record.version}, not {expected}: not deleted"
                    )
            if exists:  # an expired record goes too
                folder = self._folder(rid)
                _patiently(os.unlink, f"{folder}{rid}.tok")
                _fsync_dir(folder)
            return live

        return self._write_locked(rid, repr(key), compare_and_delete)

    # -- TokenStore ----------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        """The value of ``key`` and its version, or None (DecryptionError if unreadable)."""
        sealer = await self._ready()
        return await self._run(self._get_sync, sealer, sealer.record_id(key), key)

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None,
        ttl: float | None = None,
    ) -> int:
        """Write ``value`` if ``key`` is at ``expected_version``; return the new version."""
        check_ttl(ttl)
        sealer = await self._ready()
        rid = sealer.record_id(key)
        async with self._writers.hold(rid):
            return await self._run(
                self._put_sync, sealer, rid, key, bytes(value), expected_version, ttl
            )

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Remove ``key`` (only at ``expected_version`` when given); True if it was there."""
        sealer = await self._ready()
        rid = sealer.record_id(key)
        async with self._writers.hold(rid):
            return await self._run(self._delete_sync, sealer, rid, key, expected_version)

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]:
        """Hold ``key``'s lock for at most ``ttl`` s; LockTimeoutError after ``wait`` s.

        The lock excludes tasks of this process and other processes on this machine; a process
        that dies holding it frees it at once.
        """
        check_lock_args(ttl, wait)
        return self._lock(key, ttl, wait)

    @asynccontextmanager
    async def _lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[Lease]:
        sealer = await self._ready()
        rid = sealer.record_id(key)
        deadline = time.monotonic() + wait
        # While waiting for the file lock, the local lease must outlive the wait.
        token = await self._leases.acquire(rid, ttl=wait + ttl, deadline=deadline, name=key)
        try:
            held = await self._lock_file(rid, deadline, key)
            self._leases.renew(rid, token, ttl)
            # The lease ends after ttl even if the holder is still inside the block.
            expiry = asyncio.get_running_loop().call_later(ttl, held.release)
            try:
                yield Lease(key=key, owner=token, ttl=ttl)
            finally:
                expiry.cancel()
                held.release()  # a non-blocking unlock, safe on the event loop
        finally:
            self._leases.release(rid, token)

    async def _lock_file(self, rid: str, deadline: float, key: str) -> _HeldFile:
        held = _HeldFile(lambda: f"{self._folder(rid)}{rid}.lock")
        delay = 0.002
        try:
            while not await self._run(held.try_acquire):
                now = time.monotonic()
                if now >= deadline:
                    raise LockTimeoutError(
                        f"the lock of {key!r} is held by someone else; gave up waiting"
                    )
                await anyio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.05)
        except BaseException:
            held.release()
            raise
        return held

    async def rotate(self) -> int:
        """Re-encrypt every record not sealed with the newest key; return how many were.

        Records that cannot be decrypted are left as they are and reported together in one
        DecryptionError once the others are done.
        """
        sealer = await self._ready()
        if self._keys.needs_kdf:
            await self._run(self._recheck_kdf)
        rotated, failed = 0, []
        for rid in await self._run(self._record_ids):
            async with self._writers.hold(rid):
                try:
                    rotated += await self._run(self._rotate_sync, sealer, rid)
                except DecryptionError:
                    failed.append(rid)
        if failed:
            raise DecryptionError(
                f"{len(failed)} record(s) could not be re-encrypted: wrong key or tampered data. "
                f"They were left as they are: {', '.join(sorted(failed)[:5])}"
            )
        return rotated

    def _record_ids(self) -> list[str]:
        ids: list[str] = []
        for shard in os.scandir(self._root):
            if shard.is_dir(follow_symlinks=False) and len(shard.name) == 2:
                names = (entry.name for entry in os.scandir(shard.path))
                ids.extend(name[:-4] for name in names if name.endswith(".tok"))
        return ids

    def _rotate_sync(self, sealer: Sealer, rid: str) -> bool:
        def reseal() -> bool:
            data = _read_file(f"{self._folder(rid)}{rid}.tok")
            if data is None or sealer.is_current(data):
                return False
            self._store(rid, sealer.seal(rid, sealer.open(rid, data, name=f"record {rid}")))
            return True

        return self._write_locked(rid, f"record {rid}", reseal)

    async def aclose(self) -> None:
        """Nothing to release: every operation closes its files."""
