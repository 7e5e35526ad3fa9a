"""The CLI tests' harness: a real test server in a thread, and the real console script.

The tests block on subprocesses (and on a pseudo-terminal), so the AuthorizationServer runs on
an event loop of its own in a background thread, on the real clock; the tests drive it through
thread-safe calls. Every command runs ``deviceflow`` as a separate process with a private HOME,
XDG folders and store, and no display or browser of the machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from deviceflow.stores import generate_key
from deviceflow.testing import AuthorizationServer, RecordedRequest
from helpers import time_factor

_T = TypeVar("_T")

#: The scope the "bob" account of the ``signed_in`` fixture asks for.
BOB_SCOPE = "openid profile offline_access"

#: The real console script when it is installed beside this interpreter, else ``-m deviceflow``.
_SCRIPT = Path(sys.executable).with_name("deviceflow")
COMMAND: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "deviceflow"]


class ServerThread:
    """An AuthorizationServer on its own event loop in a daemon thread (real clock)."""

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._options = options
        self._server: AuthorizationServer | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._server = AuthorizationServer(**self._options)
        self._await(self._server.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self._await(self.server.aclose)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10 * time_factor())
        self._loop.close()

    @property
    def server(self) -> AuthorizationServer:
        """The server (call its methods through :meth:`call`)."""
        assert self._server is not None
        return self._server

    @property
    def issuer(self) -> str:
        """The server's issuer URL."""
        return self.server.issuer

    def call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a synchronous server method on the server's loop and return its result."""
        future: Future[_T] = Future()

        def run() -> None:
            try:
                future.set_result(func(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10 * time_factor())

    def _await(self, func: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(func(), self._loop).result(10 * time_factor())

    def wait_for_code(self, timeout: float = 10.0) -> str:
        """The user code of the next device code the server issues (``timeout`` real seconds,
        times the time factor)."""
        timeout *= time_factor()
        coroutine = self.server.wait_for_code(timeout=timeout)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout + 5)

    def approve(self, user_code: str) -> None:
        """Approve ``user_code`` as the person would."""
        self.call(self.server.approve, user_code)

    def deny(self, user_code: str) -> None:
        """Deny ``user_code`` as the person would."""
        self.call(self.server.deny, user_code)

    def configure(self, **options: Any) -> None:
        """Change the server's settings for codes and tokens issued from now on."""
        self.call(self.server.configure, **options)

    def requests(self, endpoint: str | None = None) -> list[RecordedRequest]:
        """The requests the server received (to ``endpoint`` when given)."""
        log = self.call(lambda: self.server.requests)
        return [r for r in log if endpoint is None or r.endpoint == endpoint]

    def is_valid(self, access_token: str) -> bool:
        """True when the server issued ``access_token`` and it still works."""
        return self.call(self.server.is_valid_access_token, access_token)


class Cli:
    """Runs the real ``deviceflow`` command with a private environment."""

    def __init__(self, home: Path, issuer: str) -> None:
        self.home = home
        self.issuer = issuer
        self.store = home / "store"
        self.key = generate_key()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DEVICEFLOW_")
            and k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER", "NO_COLOR")
        }
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_DATA_HOME=str(home / "data"),
            DEVICEFLOW_STORE=str(self.store),
            DEVICEFLOW_KEY=self.key,
            COLUMNS="100",
            PYTHONWARNINGS="error",
        )
        self.env = env
        self.logins: list[subprocess.CompletedProcess[str]] = []  # set by the signed_in fixture
        self.started: list[subprocess.Popen[str]] = []  # by popen(), ended by close()

    def server_args(self, client_id: str = "cli-test") -> list[str]:
        """The options that name the test server and the client."""
        return ["--issuer", self.issuer, "--client-id", client_id]

    def run(
        self,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``deviceflow *args`` to completion (stdin closed, output captured) within
        ``timeout`` real seconds, times the time factor."""
        return subprocess.run(
            [*COMMAND, *args],
            env=self.environment(env),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout * time_factor(),
            check=False,
        )

    def run_many(
        self, *commands: Sequence[str], env: Mapping[str, str | None] | None = None
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run several ``deviceflow`` commands at once (each a list of arguments)."""
        processes = [self.popen(*args, env=env) for args in commands]
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=30 * time_factor())
            results.append(
                subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            )
        return results

    def popen(
        self, *args: str, env: Mapping[str, str | None] | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        """Start ``deviceflow *args`` with output captured through pipes."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen(
            [*COMMAND, *args],
            env=self.environment(env),
            text=True,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
        self.started.append(process)
        return process

    def close(self) -> None:
        """Kill every process popen() started that is still running (a test that failed
        midway), and reap them all, so that none outlives its test."""
        stuck = []
        for process in self.started:
            if process.poll() is None:
                process.kill()
            try:
                # Bounded: a grandchild (a browser launcher) may hold the pipes after the kill.
                process.communicate(timeout=10 * time_factor())
            except subprocess.TimeoutExpired:
                stuck.append(process.args)  # the others are still reaped
        self.started.clear()
        assert not stuck, f"pipes still held open after the kill: {stuck}"

    def environment(self, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """The private environment, with ``extra`` applied (None removes a variable)."""
        env = dict(self.env)
        for name, value in (extra or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def snapshot(self) -> dict[str, str]:
        """Every file of the store folder with a hash of its content."""
        if not self.store.exists():
            return {}
        return {
            str(path.relative_to(self.store)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(self.store.rglob("*"))
            if path.is_file()
        }


def login_approved(
    cli: Cli, server: ServerThread, *args: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``deviceflow login`` and approve its code as soon as it is issued."""
    return logins_approved(cli, server, [(args, env)])[0]


def logins_approved(
    cli: Cli,
    server: ServerThread,
    commands: Sequence[tuple[Sequence[str], Mapping[str, str | None] | None]],
) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``deviceflow login`` at once, (arguments, extra environment) each, and
    approve every code as it is issued."""
    processes = [cli.popen("login", "--no-browser", *args, env=env) for args, env in commands]
    for _ in processes:
        server.approve(server.wait_for_code())
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=30 * time_factor())
        results.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return results
