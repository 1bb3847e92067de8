"""One relay client per credentials, media clients handed on, inside `shared_clients` (#12,
point 1), and a client shared by many callers that never lets a request time out queued
for a connection.

Real HTTP to the simulator on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prefect import flow
from prefect.types import SecretDict
from pydantic import SecretStr

import luma_prefect.relay._client as relay_client_module
from luma_prefect import GenerationRequest, LumaClient, LumaTransportError, RetryPolicy
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.tasks import download_generation
from luma_prefect.tasks._common import media_client_for, relay_client, shared_clients


async def _client_of(block: object) -> LumaClient:
    async with relay_client(block) as client:  # type: ignore[arg-type]
        return client


async def test_inside_the_block_equal_credentials_share_one_client(sim: RelaySimulator) -> None:
    block = sim.credentials()
    async with shared_clients():
        first = await _client_of(block)
        # Prefect hands tasks copies of their parameters: an equal copy is the same relay.
        assert await _client_of(block.model_copy()) is first
        generation = await first.get_generation(sim.create_generation(prompt="kept alive"))
        assert not first.is_closed  # a task leaving its `async with` keeps it open
        other_key = block.model_copy(update={"api_key": SecretStr("sk-another-key")})
        assert await _client_of(other_key) is not first
        other_headers = block.model_copy(update={"extra_headers": SecretDict({"X-Tok": "b"})})
        assert await _client_of(other_headers) is not first
        other_limit = block.model_copy(update={"max_connections": 3})
        assert await _client_of(other_limit) is not first
        async with relay_client(block, batch_size=5) as own:
            assert own is not first  # settings of its own: a client of its own
        assert own.is_closed
        async with shared_clients():  # nested: the outer block's clients
            assert await _client_of(block) is first
    assert generation.prompt == "kept alive"
    assert first.is_closed  # closed with the block


async def test_outside_the_block_or_in_another_event_loop_each_gets_its_own(
    sim: RelaySimulator,
) -> None:
    block = sim.credentials()
    alone = await _client_of(block)
    assert alone.is_closed
    async with shared_clients():
        shared = await _client_of(block)
        # A task run by a thread pool runs in another loop (its context copied): an httpx
        # client belongs to one loop, so it gets one of its own.
        elsewhere = await asyncio.to_thread(asyncio.run, _client_of(block))
        assert elsewhere is not shared and elsewhere.is_closed
        assert not shared.is_closed


async def test_reads_keep_their_connection_alive_paid_submits_never_reuse_one(
    sim: RelaySimulator,
) -> None:
    """Three task bodies in one block: their reads share one kept-alive connection; each
    submit opens one of its own, which no relay's idle timeout can cut as the POST goes
    out (an answer lost that way leaves a paid generation in doubt)."""
    block = sim.credentials()
    generation_id = sim.create_generation(prompt="read three times")
    async with shared_clients():
        for _ in range(3):
            async with relay_client(block) as client:
                await client.get_generation(generation_id)
                await client.submit_generation(GenerationRequest(prompt="paid"))
    counters = sim.counters()
    assert counters.requests["query"] == 3 and counters.reused_connections["query"] == 2
    assert counters.submits_accepted == 3 and "submit" not in counters.reused_connections


async def test_a_shared_client_queues_requests_before_their_deadline_starts(
    sim: RelaySimulator,
) -> None:
    """Two paid submits through one connection: the second waits for it, and only then
    its 1.9 s deadline starts. Queued inside httpx's pool it would time out after 2 s
    (1 s queued + 1 s answer), in doubt though never sent."""
    sim.add_fault(Fault(FaultKind.SLOW, delay_seconds=1.0, times=2, routes=("submit",)))
    client = sim.credentials().get_client(
        max_connections=1, timeout_seconds=1.9, retry=RetryPolicy(max_retries=0)
    )
    async with client:
        first, second = await asyncio.gather(
            client.submit_generation(GenerationRequest(prompt="first")),
            client.submit_generation(GenerationRequest(prompt="second")),
        )
    assert first.id != second.id
    assert sim.counters().submits_accepted == 2
    assert sim.counters().max_concurrent_requests == 1


async def test_a_task_that_outlives_the_block_gets_a_client_of_its_own(
    sim: RelaySimulator,
) -> None:
    """A task started inside the block (its context copied) that asks for a client after
    the block closed: never the closed shared one."""
    block = sim.credentials()
    later = asyncio.Event()

    async def outliving() -> LumaClient:
        await later.wait()
        async with relay_client(block) as client:
            await client.get_generation(sim.create_generation(prompt="late"))
            return client

    async with shared_clients():
        shared = await _client_of(block)
        task = asyncio.create_task(outliving())
    later.set()
    own = await task
    assert shared.is_closed and own is not shared and own.is_closed


async def test_a_closed_client_sends_nothing_not_even_a_paid_submit(
    sim: RelaySimulator,
) -> None:
    client = sim.credentials().get_client()
    await client.aclose()
    with pytest.raises(LumaTransportError, match="closed; nothing was sent"):
        await client.submit_generation(GenerationRequest(prompt="after close"))
    assert client.is_closed
    assert sim.counters().requests.get("submit", 0) == 0


async def test_a_request_waits_for_a_connection_at_most_its_limit_then_sends_nothing(
    sim: RelaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_client_module, "CONNECTION_WAIT_SECONDS", 0.2)
    sim.add_fault(Fault(FaultKind.SLOW, delay_seconds=1.0, times=1, routes=("submit",)))
    client = sim.credentials().get_client(max_connections=1, retry=RetryPolicy(max_retries=0))
    async with client:
        slow = asyncio.create_task(client.submit_generation(GenerationRequest(prompt="slow")))
        while sim.counters().requests.get("submit", 0) == 0:
            await asyncio.sleep(0)  # until the first holds the one connection
        with pytest.raises(LumaTransportError, match=r"came free within 0\.2 s.*nothing was sent"):
            await client.submit_generation(GenerationRequest(prompt="queued"))
        await slow
    assert sim.counters().submits_by_prompt == {"slow": 1}


async def test_a_request_queued_for_a_connection_holds_no_slot_of_the_fleet(
    sim: RelaySimulator,
) -> None:
    """The gate's slots are shared by every worker: a request still waiting for one of this
    client's connections must not hold one meanwhile."""
    sim.add_fault(Fault(FaultKind.SLOW, delay_seconds=0.3, times=3, routes=("query",)))
    held = most = 0

    @contextlib.asynccontextmanager
    async def gate() -> AsyncIterator[None]:
        nonlocal held, most
        held += 1
        most = max(most, held)
        try:
            yield
        finally:
            held -= 1

    ids = [sim.create_generation(prompt=f"queued {n}") for n in range(3)]
    client = sim.credentials().get_client(max_connections=1, request_gate=gate)
    async with client:
        found = await asyncio.gather(*(client.get_generation(gid) for gid in ids))
    assert [g.prompt for g in found] == ["queued 0", "queued 1", "queued 2"]
    assert most == 1


def test_inside_the_block_deliveries_keep_their_media_connection_alive(
    prefect_harness: None, sim: RelaySimulator, tmp_path: Path
) -> None:
    """Two downloads of one file each: in the block, the second comes on the first's
    connection (no new connection, over https no new handshake, per file); outside, each
    delivery's client opens and closes its own."""
    ids = [sim.create_generation(prompt=f"fox {n}", state="completed") for n in range(4)]
    block = sim.credentials()

    @flow
    async def fetch(shared: bool, generation_ids: list[str]) -> None:
        async with shared_clients() if shared else contextlib.nullcontext():
            for generation_id in generation_ids:
                await download_generation(block, generation_id, str(tmp_path), assets=["video"])

    asyncio.run(fetch(False, ids[:2]))
    assert sim.counters().requests["media"] == 2
    assert sim.counters().reused_connections.get("media", 0) == 0
    asyncio.run(fetch(True, ids[2:]))
    assert sim.counters().requests["media"] == 4
    assert sim.counters().reused_connections.get("media", 0) == 1
    assert all((tmp_path / gid / "video.mp4").stat().st_size > 0 for gid in ids)


async def test_media_clients_are_handed_on_and_all_closed_with_the_block(
    sim: RelaySimulator,
) -> None:
    block = sim.credentials()
    holding, release = asyncio.Event(), asyncio.Event()

    async def outliving() -> httpx.AsyncClient:
        async with media_client_for(block, 3) as http:
            holding.set()
            await release.wait()
            return http

    async with shared_clients():
        async with media_client_for(block, 3) as first, media_client_for(block, 3) as second:
            assert second is not first  # both in use at once: two clients
        async with media_client_for(block, 3) as again:
            assert again is first  # given back, then handed on (the last given back first)
        async with media_client_for(block, 2) as other:
            assert other not in (first, second)  # another connection limit: another client
        held = asyncio.create_task(outliving())
        await holding.wait()
    assert second.is_closed and other.is_closed  # the idle ones, with the block
    assert not first.is_closed  # still in use (the outliving task borrowed it)
    release.set()
    assert await held is first
    assert first.is_closed  # its holder closed it on leaving: the block had ended
    async with media_client_for(block, 3) as alone:
        assert alone not in (first, second)
    assert alone.is_closed
