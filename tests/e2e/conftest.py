"""End-to-end fixtures: one real Prefect server, relay simulator and serve.py per session.

See `_stack.py` for how they start, how tests drive them and how they are stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psutil
import pytest

from ._postgres import (
    PostgresStack,
    database_url,
    make_folder,
    start_postgres,
    start_postgres_stack,
    stop_postgres_stack,
    why_no_postgres,
)
from ._stack import Processes, Stack, command, start_stack


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marker into a group
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`: `--dist loadgroup`), the tests that share a session
    stack run in one worker, so each stack starts once (a server takes 10-20 s to start)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "postgres_stack" in fixtures:
            item.add_marker(pytest.mark.xdist_group("postgres-stack"))
        elif "stack" in fixtures:
            item.add_marker(pytest.mark.xdist_group("stack"))


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Server, simulator and serve.py for the whole session; nothing of them left after.

    The server keeps its data in a PostgreSQL of its own when PostgreSQL is installed: on
    SQLite, Prefect's API answers 503 to a concurrency-slot increment that meets another
    write, and its client waits 2 s before retrying (see `SessionAPI` in tests/conftest.py).
    """
    if command("prefect") is None:
        pytest.skip("the `prefect` command line is not installed: no server to test against")
    tmp = tmp_path_factory.mktemp("e2e")
    processes = Processes(logs=tmp)
    folder = make_folder() if why_no_postgres() is None else None
    try:
        url = None
        if folder is not None:
            _, port = await start_postgres(processes, folder)
            url = database_url(port)
        yield await start_stack(processes, tmp, database_url=url)
    finally:
        try:
            if folder is not None:
                stop_postgres_stack(processes, folder)  # and its cluster's folder
            else:
                processes.stop_all()
        finally:
            leftovers = processes.ours()
            for proc in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture(scope="session")
async def postgres_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresStack]:
    """A Prefect server on a real PostgreSQL for the session; nothing of them left after."""
    reason = why_no_postgres()
    if reason is not None:
        pytest.skip(f"no PostgreSQL-backed Prefect server: {reason}")
    processes = Processes(logs=tmp_path_factory.mktemp("postgres-stack"))
    folder = make_folder()
    try:
        yield await start_postgres_stack(processes, folder)
    finally:
        try:
            stop_postgres_stack(processes, folder)
        finally:
            leftovers = processes.ours()
            for proc in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            assert not leftovers, f"processes left behind: {leftovers}"
            assert not folder.exists(), f"PostgreSQL folder left behind: {folder}"
