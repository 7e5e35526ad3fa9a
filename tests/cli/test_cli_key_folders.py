"""The CLI's store key file: the folders made for it are private whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deviceflow._cli._store import write_key_file
from deviceflow.stores import generate_key


@pytest.mark.skipif(os.name != "posix", reason="folder modes are POSIX")
def test_missing_folders_of_a_key_file_are_made_0700_under_umask_000(tmp_path: Path) -> None:
    """Under umask 000 every folder made for a new key file is 0700, and the file 0600."""
    path = tmp_path / "a" / "b" / "store.key"
    old = os.umask(0)
    try:
        assert write_key_file(path, generate_key())
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "a", tmp_path / "a" / "b", path)]
    assert [0o700, 0o700, 0o600] == modes
