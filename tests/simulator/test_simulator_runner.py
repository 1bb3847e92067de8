"""The runner, the clock, the counters, the admin routes and the pytest plugin."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx
import pytest

from luma_prefect.simulator import (
    Counters,
    Fault,
    FaultKind,
    RelaySimulator,
    SimulatorConfig,
    run_simulator,
)
from luma_prefect.simulator.pytest_plugin import LumaSimulator


def refused(base_url: str) -> bool:
    host, port = base_url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def simulator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("luma-simulator-")]


def test_runner_stops_cleanly() -> None:
    before = len(simulator_threads())
    with run_simulator(style="task", pending_seconds=0) as sim:
        assert sim.running and sim.base_url.startswith("http://127.0.0.1:")
        assert len(simulator_threads()) == before + 1
        with httpx.Client(base_url=sim.base_url) as client:
            assert client.get("/_simulator").json()["style"] == "task"
        base_url = sim.base_url
    assert not sim.running
    assert len(simulator_threads()) == before
    assert refused(base_url)
    sim.stop()  # twice is fine


def test_start_stop_restart_same_port() -> None:
    sim = RelaySimulator(SimulatorConfig(manual_clock=True))
    with pytest.raises(RuntimeError):
        _ = sim.base_url
    with pytest.raises(RuntimeError):
        sim.generation("x")
    sim.start()
    try:
        with pytest.raises(RuntimeError):
            sim.start()
        gid = sim.create_generation(prompt="kept", state="completed")
        base_url = sim.base_url
        sim.stop()
        assert refused(base_url)
        sim.start()
        assert sim.base_url == base_url
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        answer = httpx.get(f"{base_url}/luma/generations/{gid}", headers=headers)
        assert answer.json()["prompt"] == "kept"
    finally:
        sim.stop()
    assert "not started" not in repr(sim)


def test_configured_port_and_kwargs_override() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = SimulatorConfig(style="official", api_key="sk-x")
    with run_simulator(config, port=port, manual_clock=True) as sim:
        assert sim.base_url == f"http://127.0.0.1:{port}"
        assert sim.style == "official" and sim.api_key == "sk-x"
        assert sim.config.manual_clock
        with pytest.raises(OSError), run_simulator(port=port):
            pass


def test_config_validation() -> None:
    for bad in (
        {"style": "soap"},
        {"failure_ratio": 1.5},
        {"pending_seconds": -1},
        {"batch_shape": "xml"},
        {"submit_shape": "tuple"},
        {"duration_jitter": 1.0},
        {"video_bytes": -5},
        {"port": 70000},
    ):
        with pytest.raises(ValueError):
            SimulatorConfig(**bad)
    assert SimulatorConfig(route_prefix="").route_prefix == ""


def test_counters_exact(sim: RelaySimulator, api: httpx.Client) -> None:
    gid = api.post("/luma/generations", json={"user_prompt": "cat"}).json()["id"]
    api.post("/luma/generations", json={"user_prompt": "cat"})
    api.post("/luma/generations", json={"user_prompt": "dog"})
    for _ in range(3):
        api.get(f"/luma/generations/{gid}")
    api.post("/luma/tasks", json={"ids": [gid, "ghost"]})
    counters = sim.counters()
    assert isinstance(counters, Counters)
    assert counters.requests == {"submit": 3, "query": 3, "batch": 1}
    assert counters.submits_accepted == 3
    assert counters.submits_by_prompt == {"cat": 2, "dog": 1}
    assert counters.queries_by_generation == {gid: 4, "ghost": 1}
    assert counters.bytes_served == 0
    with pytest.raises(AttributeError):
        counters.submits_accepted = 5  # type: ignore[misc]
    sim.reset_counters()
    assert sim.counters() == Counters()
    assert len(sim.generation_ids()) == 3


def test_admin_routes(sim: RelaySimulator, api: httpx.Client) -> None:
    gid = api.post("/luma/generations", json={"user_prompt": "cat"}).json()["id"]
    with httpx.Client(base_url=f"{sim.base_url}/_simulator") as admin:
        counters = admin.get("/counters").json()
        assert counters["submits_accepted"] == 1 and counters["requests"]["submit"] == 1
        listed = admin.get("/generations").json()
        assert [g["id"] for g in listed] == [gid] and listed[0]["state"] == "pending"
        assert admin.post("/advance", json={"seconds": 10}).json()["now"] == 10
        assert admin.get("/generations").json()[0]["state"] == "completed"
        assert admin.post("/advance", json={"seconds": -1}).status_code == 400
        assert admin.post("/advance", json={}).status_code == 400
        seeded = admin.post("/generations", json={"prompt": "seed", "state": "failed"})
        assert seeded.status_code == 201
        assert sim.generation(seeded.json()["id"])["state"] == "failed"
        assert admin.post("/generations", json={"state": "melted"}).status_code == 400
        assert admin.post("/reset-counters").status_code == 200
        assert admin.get("/counters").json()["requests"] == {"admin": 1}
        info = admin.get("").json()
        assert info["base_url"] == sim.base_url and info["route_prefix"] == "/luma"
    assert sim.counters().requests == {"admin": 2}


def test_clock_modes() -> None:
    with run_simulator(pending_seconds=0, processing_seconds=0) as sim:
        gid = sim.create_generation(prompt="x", state="pending")
        assert sim.generation(gid)["state"] == "completed"
    with run_simulator(pending_seconds=30, processing_seconds=30) as sim:
        gid = sim.create_generation(prompt="x", state="pending")
        assert sim.generation(gid)["state"] == "pending"
        wait = sim.generation(gid)["estimate_wait_seconds"]
        assert 59 <= wait <= 60
        assert sim.advance(30) >= 30
        assert sim.generation(gid)["state"] == "processing"
        sim.advance(30)
        assert sim.generation(gid)["state"] == "completed"
        with pytest.raises(ValueError):
            sim.advance(-1)


def test_seeded_failures_and_jitter_are_reproducible() -> None:
    def outcomes(seed: int) -> tuple[list[str], list[int]]:
        config = SimulatorConfig(
            manual_clock=True,
            failure_ratio=0.5,
            duration_jitter=0.5,
            pending_seconds=10,
            processing_seconds=10,
            seed=seed,
        )
        with run_simulator(config) as sim:
            headers = {"Authorization": f"Bearer {sim.api_key}"}
            with httpx.Client(base_url=sim.base_url, headers=headers) as api:
                ids = [
                    api.post("/luma/generations", json={"user_prompt": f"p{i}"}).json()["id"]
                    for i in range(20)
                ]
            waits = [sim.generation(i)["estimate_wait_seconds"] for i in ids]
            sim.advance(100)
            states = [sim.generation(i)["state"] for i in ids]
            reasons = {sim.generation(i)["failure_reason"] for i in ids}
        assert reasons == {None, "Generation failed: the upstream job errored"}
        return states, waits

    first, again, other = outcomes(7), outcomes(7), outcomes(8)
    assert first == again
    assert first != other
    assert 3 <= first[0].count("failed") <= 17
    assert len(set(first[1])) > 3 and all(10 <= w <= 30 for w in first[1])


def test_thousand_generations_in_one_batch(sim: RelaySimulator, api: httpx.Client) -> None:
    ids = [sim.create_generation(prompt=f"p{i}", state="processing") for i in range(1000)]
    sim.advance(5)
    answer = api.post("/luma/tasks", json={"ids": ids})
    items = answer.json()
    assert len(items) == 1000 and {i["state"] for i in items} == {"completed"}
    assert sim.counters().queries_by_generation[ids[-1]] == 1


async def test_concurrent_requests_and_steering(sim: RelaySimulator) -> None:
    gid = sim.create_generation(prompt="busy", state="completed")
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as client:

        async def poll() -> int:
            return (await client.get(f"/luma/generations/{gid}")).status_code

        sim.add_fault(Fault(FaultKind.SERVER_ERROR, times=50))
        statuses = await asyncio.gather(*(poll() for _ in range(200)))
    assert statuses.count(503) == 50 and statuses.count(200) == 150
    assert sim.counters().requests["query"] == 200
    assert sim.counters().queries_by_generation[gid] == 200


def test_generation_lookup(sim: RelaySimulator) -> None:
    with pytest.raises(KeyError):
        sim.generation("nope")
    with pytest.raises(ValueError):
        sim.create_generation(state="melted")
    gid = sim.create_generation(prompt="x", state="failed", failure_reason="Out of credits")
    assert sim.generation(gid)["failure_reason"] == "Out of credits"
    assert sim.generation_ids() == [gid]


def test_plugin_fixtures(
    luma_simulator: RelaySimulator, luma_simulator_factory: Callable[..., RelaySimulator]
) -> None:
    assert luma_simulator.running and not luma_simulator.config.manual_clock
    assert luma_simulator.config.pending_seconds == 0.05
    other = luma_simulator_factory(style="official")
    assert other.style == "official" and other.config.processing_seconds == 0.1
    third = luma_simulator_factory(SimulatorConfig(style="task"), seed=3)
    assert third.config.seed == 3 and third.config.pending_seconds == 1.0


def test_import_has_no_side_effects() -> None:
    code = (
        "import sys, threading\n"
        "before = set(sys.modules)\n"
        "import luma_prefect.simulator\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'luma_prefect.simulator._app' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_connection_fits_the_credentials_block() -> None:
    from luma_prefect import LumaRelayCredentials

    with run_simulator(style="task", route_prefix="/vip/luma") as sim:
        credentials = LumaRelayCredentials.model_validate(sim.connection())
        assert credentials.base_url == sim.base_url
        assert credentials.api_key.get_secret_value() == sim.api_key
        assert credentials.api_style == "task" and credentials.route_prefix == "/vip/luma"


def test_the_plugin_simulator_makes_credentials(
    luma_simulator_factory: Callable[..., LumaSimulator],
) -> None:
    sim = luma_simulator_factory(style="official")
    credentials = sim.credentials()
    assert credentials.base_url == sim.base_url
    assert credentials.api_key.get_secret_value() == sim.api_key
    assert credentials.api_style == "official" and credentials.route_prefix == sim.route_prefix


@pytest.mark.parametrize("style", ["generations", "task", "official"])
async def test_our_client_against_each_style(
    style: str, sim_factory: Callable[..., RelaySimulator]
) -> None:
    luma_prefect = pytest.importorskip("luma_prefect")
    if not hasattr(luma_prefect, "LumaClient"):
        pytest.skip("luma_prefect.LumaClient is not there yet")
    from luma_prefect import GenerationRequest, LumaClient

    sim = sim_factory(style=style)
    async with LumaClient(
        sim.base_url, sim.api_key, api_style=sim.style, route_prefix=sim.route_prefix
    ) as client:
        created = await client.submit_generation(GenerationRequest(prompt="cat dance"))
        second = await client.submit_generation(GenerationRequest(prompt="dog dance"))
        sim.advance(10)
        done = await client.get_generation(created.id)
        assert str(done.state.value) == "completed"
        both = await client.get_generations([created.id, second.id])
        assert [g.id for g in both] == [created.id, second.id]
        url = await client.get_download_url(created.id)
        assert httpx.get(url).status_code == 200
    counters = sim.counters()
    assert counters.submits_accepted == 2
    assert counters.requests.get("batch", 0) == (1 if style == "generations" else 0)
