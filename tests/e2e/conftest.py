"""End-to-end fixtures: one real Prefect server, relay simulator and serve.py per session.

See `_stack.py` for how they start, how tests drive them and how they are stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psutil
import pytest

from ._stack import Processes, Stack, command, start_stack


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Server, simulator and serve.py for the whole session; nothing of them left after."""
    if command("prefect") is None:
        pytest.skip("the `prefect` command line is not installed: no server to test against")
    tmp = tmp_path_factory.mktemp("e2e")
    processes = Processes(logs=tmp)
    try:
        yield await start_stack(processes, tmp)
    finally:
        try:
            processes.stop_all()
        finally:
            leftovers = processes.ours()
            for proc in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            assert not leftovers, f"processes left behind: {leftovers}"
