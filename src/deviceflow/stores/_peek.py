"""A blocking, read-only look at one record of an :class:`EncryptedFileStore`.

For a short-lived process that needs one value and nothing else (``deviceflow token`` with a
cached token): no event loop, no worker thread, no lock library. It follows the store's layout
(``<folder>/<first two digits of the record id>/<record id>.tok``, see ``_file.py``) and opens
the envelope with the same :class:`~deviceflow._crypto.Sealer`.

It creates nothing and changes nothing. Whenever it cannot vouch for an answer (a passphrase
key, which needs the store's KDF parameters; a folder the store would refuse; a missing, expired
or unreadable record) it answers None, and the caller takes the store's own path, which then
reports the problem properly. Only a positive answer is ever used.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from deviceflow._crypto import KeySet, Sealer
from deviceflow.exceptions import DeviceFlowError

__all__ = ["peek_record"]


def peek_record(
    folder: str | os.PathLike[str], keys: KeySet, key: str, *, namespace: str = "deviceflow"
) -> bytes | None:
    """The live value of ``key`` in the file store at ``folder``, or None (see above)."""
    root = Path(folder).expanduser().absolute()
    if keys.needs_kdf:
        return None
    try:
        info = os.lstat(root)
        if not stat.S_ISDIR(info.st_mode):
            return None  # missing, a file, or a symbolic link: the store decides
        if os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
            return None  # a folder the store refuses
        sealer = Sealer(keys.resolve(None), namespace)
        rid = sealer.record_id(key)
        with open(root / rid[:2] / f"{rid}.tok", "rb") as handle:
            envelope = handle.read()
        record = sealer.open(rid, envelope, name=repr(key))
    except (OSError, ValueError, DeviceFlowError):
        return None
    if record.expired(time.time()):
        return None
    return record.value
