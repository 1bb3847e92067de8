"""`import luma_prefect` stays cheap: names load on first use, Prefect only when needed.

The command line and the simulator import the package without touching Prefect (its import
alone takes about a second here); Prefect itself imports the block's module, through the
`prefect.collections` entry point, to register the block type.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import luma_prefect

REPO = Path(__file__).parents[2]
PACKAGE_INIT = REPO / "luma_prefect" / "__init__.py"


def modules_after(code: str) -> dict[str, list[str]]:
    """Run `code` in a fresh interpreter; the modules it imported, all and new ones."""
    probe = textwrap.dedent(
        """
        import json, sys
        before = set(sys.modules)
        {code}
        print(json.dumps({{"new": sorted(set(sys.modules) - before), "all": sorted(sys.modules)}}))
        """
    ).format(code=code)
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def roots(modules: list[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_import_luma_prefect_imports_no_library_at_all() -> None:
    """No Prefect, httpx or pydantic: only the package's own `__init__`."""
    new = modules_after("import luma_prefect")["new"]
    assert "luma_prefect" in new
    assert [m for m in new if m.startswith("luma_prefect.")] == []
    assert roots(new).isdisjoint({"prefect", "httpx", "pydantic", "uvicorn", "starlette"})


def test_import_of_the_simulator_does_not_import_prefect() -> None:
    """The simulator runs without Prefect: nothing of the product but its own modules."""
    new = modules_after("import luma_prefect.simulator")["new"]
    assert "luma_prefect.simulator" in new
    ours = [m for m in new if m.startswith("luma_prefect.")]
    assert all(m.startswith("luma_prefect.simulator") for m in ours), ours
    assert "prefect" not in roots(new)


def test_the_cli_module_does_not_import_prefect_when_loaded() -> None:
    """Loading the command line (what `--help` needs) leaves Prefect alone."""
    new = modules_after("import luma_prefect.cli")["new"]
    assert "luma_prefect.cli" in new
    assert "prefect" not in roots(new)


def test_a_name_loads_its_module_on_first_use() -> None:
    """The lazy names work: the first use imports the right module, and only then."""
    found = modules_after(
        "import luma_prefect, sys\n"
        "assert 'luma_prefect.credentials' not in sys.modules\n"
        "assert luma_prefect.LumaRelayCredentials.__module__ == 'luma_prefect.credentials'"
    )
    assert "luma_prefect.credentials" in found["new"]
    assert "prefect" in roots(found["new"])


def test_every_public_name_resolves_to_its_home() -> None:
    """Each name of `__all__` is there, the same object as in the module it comes from."""
    for name in luma_prefect.__all__:
        value = getattr(luma_prefect, name)
        if name == "__version__":
            continue
        home = importlib.import_module(luma_prefect._SOURCES[name])
        assert value is getattr(home, name), name
    assert set(luma_prefect.__all__) <= set(dir(luma_prefect))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'parse_generations'"):
        _ = luma_prefect.parse_generations


def test_type_checkers_see_the_same_names_as_users() -> None:
    """The `TYPE_CHECKING` imports, the lazy table and `__all__` list the same names."""
    tree = ast.parse(PACKAGE_INIT.read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    typed = {
        (alias.asname or alias.name, node.module)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == set(luma_prefect._SOURCES.items())
    assert set(luma_prefect.__all__) == {*luma_prefect._SOURCES, "__version__"}


def test_prefect_collection_entry_point_is_the_block_module() -> None:
    """Prefect finds the collection through the `prefect.collections` entry point, which
    names the block's module (the package alone would register nothing)."""
    entry_points = importlib.metadata.entry_points(group="prefect.collections")
    ours = [ep for ep in entry_points if ep.name == "luma_prefect"]
    assert len(ours) == 1
    assert ours[0].value == "luma_prefect.credentials"


def test_prefect_finds_the_block_type_and_pulls_in_nothing_heavy() -> None:
    """Prefect's own lookup by slug registers our block; tasks, flows, simulator stay out."""
    found = modules_after(
        "import prefect\n"
        "from prefect.blocks.core import Block\n"
        "before = set(sys.modules)\n"
        "cls = Block.get_block_class_from_key('luma-relay-credentials')\n"
        "assert cls.__module__ == 'luma_prefect.credentials', cls"
    )
    loaded = [m for m in found["all"] if m.startswith("luma_prefect")]
    assert "luma_prefect.credentials" in loaded
    for heavy in ("luma_prefect.tasks", "luma_prefect.flows", "luma_prefect.simulator"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy
    assert "uvicorn" not in roots(found["all"])
