"""When an optional package is missing, the error says how to install it, in a way that works
before deviceflow is on PyPI: the package itself, or the extra from a checkout.

Each case runs in a fresh interpreter where the package cannot be imported (``None`` in
``sys.modules``), so the modules already imported by the suite are left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deviceflow.stores import generate_key

SRC = Path(__file__).resolve().parent.parent / "src"


def run_without(package: str, code: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter in which ``import <package>`` fails."""
    prelude = f"import sys\nsys.modules[{package!r}] = None\n"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "PYTHONPATH": str(SRC),
        "DEVICEFLOW_KEY": generate_key(),
    }
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("package", "code", "install"),
    [
        pytest.param(
            "redis",
            "from deviceflow.stores import RedisStore",
            "pip install 'redis>=5.0.1' (or, in a checkout of deviceflow, pip install '.[redis]')",
            id="RedisStore",
        ),
        pytest.param(
            "httpx",
            "import deviceflow.httpx",
            "pip install 'httpx>=0.27' (or, in a checkout of deviceflow, pip install '.[httpx]')",
            id="deviceflow.httpx",
        ),
        pytest.param(
            "redis",
            """
            from deviceflow.cli import main
            sys.exit(main(["status", "--store", "redis://127.0.0.1:1/0"]))
            """,
            "install it: pip install 'redis>=5.0.1' "
            "(or, in a checkout of deviceflow, pip install '.[redis]')",
            id="cli --store redis://",
        ),
    ],
)
def test_a_missing_package_names_an_install_that_works(
    package: str, code: str, install: str, tmp_path: Path
) -> None:
    """The import error (or the CLI's hint) gives the package and the checkout's extra."""
    result = run_without(package, code, tmp_path)
    assert result.returncode != 0
    assert install in result.stderr
    assert "deviceflow[" not in result.stderr
