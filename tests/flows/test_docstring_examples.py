"""Every ```python example in the docstrings of the public names runs, against the simulator.

Public names: `luma_prefect.__all__`, `luma_prefect.tasks.__all__`, `luma_prefect.flows.__all__`,
the public methods and properties of those classes, and the three packages' own docstrings.
Each example runs in a fresh copy of a small namespace (below) with the working directory in
a temporary folder; examples with a top-level `await` run in an event loop. The saved block
`luma-relay` points at the simulator, whose clock the waits drive, so a 30-minute wait takes
milliseconds. The examples' placeholders (a uuid, a relay address and key, Prefect's
`BLOCK_NAME`) stand for the simulator's generation, address and key, and the saved block.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

import luma_prefect
import luma_prefect.flows
import luma_prefect.tasks
import luma_prefect.tasks._common
from luma_prefect import GenerationRequest, LumaError, LumaRelayCredentials
from luma_prefect.simulator import RelaySimulator, SimulatorConfig
from luma_prefect.simulator.pytest_plugin import FakeClock

# The examples load the block named "luma-relay" (as users do, and as the flows' default
# credentials), which `shared` saves pointing at its own simulator. Under pytest-xdist the
# workers share one Prefect API, so the examples run in one worker: one writer of the name.
pytestmark = pytest.mark.xdist_group("luma-relay-block")

_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
_PLACEHOLDER_ID = "4665a07c-7641-4809-a133-10786201bb56"


def _documented(obj: Any) -> Iterator[Any]:
    """The object, and for a class its own public methods and properties."""
    yield obj
    if not inspect.isclass(obj):
        return
    for name, member in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (classmethod, staticmethod)):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        if inspect.isfunction(member):
            yield member


def _examples() -> Iterator[Any]:
    seen: set[int] = set()
    for module in (luma_prefect, luma_prefect.tasks, luma_prefect.flows):
        owners = [(module.__name__, module)]
        owners += [(f"{module.__name__}.{n}", getattr(module, n)) for n in module.__all__]
        for label, owner in owners:
            for obj in _documented(owner):
                doc = getattr(obj, "__doc__", None)
                # Aliases such as `ApiStyle` carry typing's own docstring: not ours.
                home = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", "")
                ours = str(home).startswith("luma_prefect")
                if id(obj) in seen or not ours or not isinstance(doc, str):
                    continue
                seen.add(id(obj))
                name = label if obj is owner else f"{label}.{obj.__name__}"
                for number, block in enumerate(_BLOCK.findall(doc)):
                    yield pytest.param(inspect.cleandoc("\n" + block), id=f"{name}#{number}")


EXAMPLES = list(_examples())


def test_there_are_examples_to_run() -> None:
    """The collection above found the examples (so the test below means something)."""
    ids = [example.id for example in EXAMPLES]
    assert len(ids) > 50
    assert "luma_prefect#0" in ids and "luma_prefect.flows#0" in ids
    assert "luma_prefect.tasks.submit_generation#0" in ids
    assert "luma_prefect.LumaClient.get_generation#0" in ids


@pytest.fixture(scope="module")
def shared(
    prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One simulator, the saved block and a published generation, for every example."""
    config = SimulatorConfig(manual_clock=True, pending_seconds=20.0, processing_seconds=40.0)
    with RelaySimulator(config) as sim, pytest.MonkeyPatch.context() as patch:
        patch.setattr(luma_prefect.tasks._common, "wait_clock", FakeClock(sim))
        credentials = LumaRelayCredentials.model_validate(sim.connection())
        credentials.save("luma-relay", overwrite=True)
        ids = [sim.create_generation(prompt=f"seeded {i}", state="completed") for i in range(3)]
        folder = str(tmp_path_factory.mktemp("examples") / "luma-output")

        async def prepare() -> dict[str, Any]:
            from luma_prefect.flows import collect_generations

            async with credentials.get_client() as client:
                generation = await client.get_generation(ids[0])
            outcomes = await collect_generations([ids[0]], destination=folder)
            return {"generation": generation, "outcomes": outcomes}

        prepared = asyncio.run(prepare())
        outcome = prepared["outcomes"][0]
        assert outcome.ok, outcome.error
        yield {
            **{name: getattr(luma_prefect, name) for name in luma_prefect.__all__},
            "asyncio": asyncio,
            "flow": flow,
            "task": task,
            "sim": sim,
            "credentials": credentials,
            "base_url": sim.base_url,
            "key": sim.api_key,
            "generation_id": ids[0],
            "gid": ids[0],
            "first_id": ids[1],
            "second_id": ids[2],
            "ids": ids,
            "generation": prepared["generation"],
            "done": prepared["generation"],
            "request": GenerationRequest(prompt="a red fox in the snow"),
            "outcomes": prepared["outcomes"],
            "outcome": outcome,
            "downloaded": outcome.published.downloaded,
            "exc": LumaError("an example error", generation_id=ids[0]),
        }


@pytest.fixture
def namespace(
    shared: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """What the examples may use without defining it; the working directory is fresh."""
    monkeypatch.setenv("LUMA_RELAY_BASE_URL", shared["base_url"])
    monkeypatch.setenv("LUMA_RELAY_API_KEY", shared["key"])
    monkeypatch.setenv("LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS", "1")  # the simulator is on loopback
    monkeypatch.chdir(tmp_path)
    return dict(shared)


def _source(example: str, names: dict[str, Any]) -> str:
    return (
        example.replace(_PLACEHOLDER_ID, names["generation_id"])
        .replace('"4665a07c-..."', repr(names["generation_id"]))
        .replace("https://relay.example", names["base_url"])
        .replace('"sk-..."', repr(names["key"]))
        .replace('"BLOCK_NAME"', '"luma-relay"')  # as Prefect's UI shows a block's example
    )


@pytest.mark.parametrize("example", EXAMPLES)
def test_docstring_example_runs(example: str, namespace: dict[str, Any]) -> None:
    source = _source(example, namespace)
    code = compile(source, "<docstring example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    scope = dict(namespace)
    if code.co_flags & inspect.CO_COROUTINE:

        async def run() -> None:
            async with namespace["credentials"].get_client() as client:
                scope["client"] = client
                await eval(code, scope)

        asyncio.run(run())
    else:
        client = namespace["credentials"].get_client()
        scope["client"] = client
        try:
            exec(code, scope)
        finally:
            asyncio.run(client.aclose())
