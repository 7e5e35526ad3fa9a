"""Shared by the benchmarks: the test server in its own process, stats, resident memory.

The server runs as ``python -m deviceflow.testing`` in a child process so the benchmark's own
CPU time (``time.process_time``) is the client's alone. Its stdout goes to a file, not a pipe:
it prints a line per device code, and a pipe nobody drains would block it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs


@attrs.frozen
class ServerProcess:
    """The test authorization server running in a child process."""

    issuer: str
    pid: int

    @property
    def device_authorization_endpoint(self) -> str:
        return self.issuer + "/device_authorization"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def revocation_endpoint(self) -> str:
        return self.issuer + "/revoke"

    def cpu(self) -> float:
        """User + system CPU seconds the server process has used so far (Linux /proc)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server_process(*args: str) -> Iterator[ServerProcess]:
    """Start ``python -m deviceflow.testing --port 0 ARGS`` and yield once it serves."""
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deviceflow.testing", "--port", "0", *args],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            issuer = ""
            while not issuer.endswith("\n"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the test server did not start")
                time.sleep(0.05)
                out.seek(0)
                issuer = out.readline()
            yield ServerProcess(issuer=issuer.strip(), pid=proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> None:
    """A full collection, and freed memory handed back (glibc), before reading rss()."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS keeps what it holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    """One line describing where the numbers come from."""
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()} {platform.machine()}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, columns right-aligned after the first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
