"""Running the command line for real: a subprocess, its own Prefect home, and loopback only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

# The console script pip made for this environment, as users run it.
ENTRY_POINT = Path(sys.executable).with_name("luma-prefect")


_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound here, never listened on, and held
    for the session, so no server of another test (or xdist worker) can take it meanwhile."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    _HELD.append(probe)
    return int(probe.getsockname()[1])


def one_line_error(result: subprocess.CompletedProcess[str] | object) -> str:
    """The single line a failed command printed, after checking it is the only one."""
    stdout = str(getattr(result, "stdout", "") or "")
    stderr = str(getattr(result, "stderr", "") or "")
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert "Traceback" not in stdout + stderr
    assert len(lines) == 1, stdout + stderr
    assert stderr.startswith("error: "), stderr
    return lines[0]


@pytest.fixture
def run_cli(tmp_path: Path) -> Run:
    """`luma-prefect ARGS...` in a new process, as a user runs it; `env` adds variables.

    No relay or Prefect variable of the test process leaks in: each test says what it uses.
    """
    assert ENTRY_POINT.exists(), f"no console script at {ENTRY_POINT}: pip install -e ."

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LUMA_RELAY_", "PREFECT_", "LUMA_PREFECT_"))
        }
        base.update(
            PREFECT_HOME=str(tmp_path / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            COLUMNS="200",
        )
        return subprocess.run(
            [str(ENTRY_POINT), *args],
            env={**base, **(env or {})},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )

    return run
