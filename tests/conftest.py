"""Shared test set-up: quiet Prefect in a home of its own, one embedded API per session."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Before Prefect is imported anywhere: no telemetry (it logs a network error offline).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The tests are guests, like the CLI's local runs (luma_prefect/_prefect_home.py): unless
# PREFECT_API_URL names a server, Prefect gets a temporary home and database of its own,
# set before it is imported, so it never reads, creates or migrates the user's ~/.prefect.
if not os.environ.get("PREFECT_API_URL"):
    _home = Path(tempfile.mkdtemp(prefix="luma-tests-prefect-home-"))
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ["PREFECT_HOME"] = str(_home)
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
        f"sqlite+aiosqlite:///{_home / 'prefect.db'}"
    )

# The simulator's own pytest plugin, as users enable it: `luma_simulator` and
# `luma_simulator_factory` for every test folder.
pytest_plugins = ["luma_prefect.simulator.pytest_plugin"]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's embedded API with a temporary database, started once for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


RELAY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "relay"
"""Relay answer bodies, one JSON file per shape (see tests/fixtures/README.md)."""


@pytest.fixture
def load_fixture() -> Callable[[str], Any]:
    """Read one JSON file of tests/fixtures/relay by name."""

    def load(name: str) -> Any:
        return json.loads((RELAY_FIXTURES / name).read_text(encoding="utf-8"))

    return load
