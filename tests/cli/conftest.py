"""Fixtures for the CLI tests (the harness itself is in cli_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import BOB_SCOPE, Cli, ServerThread, logins_approved


@pytest.fixture
def server() -> Iterator[ServerThread]:
    """A test server on the real clock, polled every 0.25 s, approving nothing by itself."""
    with ServerThread(interval=0.25, code_lifetime=60, access_token_lifetime=3600) as running:
        yield running


@pytest.fixture
def cli(tmp_path: Path, server: ServerThread) -> Iterator[Cli]:
    """The ``deviceflow`` command in a private home, pointed at ``server``."""
    running = Cli(tmp_path, server.issuer)
    yield running
    running.close()


@pytest.fixture(scope="session")
def signed_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, ServerThread]]:
    """A server and a CLI home where two accounts are signed in, for tests that only read:
    "ci" (client cli-test) and "bob" (client other-app, scope BOB_SCOPE)."""
    with ServerThread(interval=0.25, code_lifetime=60, access_token_lifetime=3600) as running:
        shared = Cli(tmp_path_factory.mktemp("signed-in"), running.issuer)
        bob = [*shared.server_args("other-app"), "--account", "bob", "--scope", BOB_SCOPE]
        results = logins_approved(
            shared, running, [([*shared.server_args(), "--account", "ci"], None), (bob, None)]
        )
        assert [0, 0] == [r.returncode for r in results], [r.stderr for r in results]
        shared.logins = results
        yield shared, running
        shared.close()
