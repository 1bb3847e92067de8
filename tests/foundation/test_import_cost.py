"""`import luma_prefect` stays cheap: Prefect imports every registered collection at start-up."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
HEAVY = (
    "luma_prefect.simulator",
    "luma_prefect.tasks",
    "luma_prefect.flows",
    "uvicorn",
    "starlette",
)
BUDGET_SECONDS = 0.150

PROBE = textwrap.dedent(
    """
    import json, sys, time
    import prefect
    before = set(sys.modules)
    started = time.perf_counter()
    import luma_prefect
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "elapsed": elapsed,
        "new": sorted(set(sys.modules) - before),
        "all": sorted(sys.modules),
    }))
    """
)


@pytest.fixture(scope="module")
def probe() -> dict:
    """Import prefect, then luma_prefect, in a fresh interpreter; report time and modules."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_adds_well_under_150_ms(probe):
    """On top of `import prefect`, importing the package costs well under 150 ms."""
    assert probe["elapsed"] < BUDGET_SECONDS, f"import luma_prefect took {probe['elapsed']:.3f} s"


@pytest.mark.parametrize("module", HEAVY)
def test_import_pulls_in_nothing_heavy(probe, module):
    """No simulator, server, tasks or flows are imported by `import luma_prefect`.

    starlette is imported by prefect itself, so what counts is what luma_prefect adds.
    """
    added = [name for name in probe["new"] if name == module or name.startswith(module + ".")]
    assert added == []
    if module.startswith("luma_prefect."):
        assert module not in probe["all"]


def test_the_import_did_load_the_package(probe):
    """The probe really imported luma_prefect (so the checks above mean something)."""
    assert "luma_prefect" in probe["new"]
    assert "luma_prefect.credentials" in probe["new"]


def test_prefect_collection_entry_point_is_declared():
    """Prefect finds the collection through the `prefect.collections` entry point."""
    entry_points = importlib.metadata.entry_points(group="prefect.collections")
    ours = [ep for ep in entry_points if ep.name == "luma_prefect"]
    assert len(ours) == 1
    assert ours[0].value == "luma_prefect"
