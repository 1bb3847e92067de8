"""Rounds start to start, and ids that join a running wait (the batch flows' one wait).

Real loopback HTTP to the simulator, fake time (`FakeClock`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from luma_prefect import (
    Generation,
    GenerationRequest,
    GenerationState,
    LumaClient,
    LumaError,
    LumaGenerationFailed,
    LumaWaitTimeout,
)
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.wait._engine import (
    WaitFeed,
    WaitSettings,
    follow_generations,
    wait_for_generations,
)

MakeClient = Callable[..., LumaClient]
EVERY_10_S = {"poll_interval_seconds": 10.0, "max_poll_interval_seconds": 10.0}


async def submit(client: LumaClient, prompt: str) -> str:
    return (await client.submit_generation(GenerationRequest(prompt=prompt))).id


def slow_rounds(client: LumaClient, clock: FakeClock, seconds: float) -> list[float]:
    """Each batch round takes `seconds` of fake time (a large batch's round); its starts."""
    starts: list[float] = []
    original = client.find_generations

    async def find_generations(ids: Any) -> Any:
        starts.append(clock.now)
        found = await original(ids)
        clock.now += seconds  # the round's own duration, on the engine's clock
        return found

    client.find_generations = find_generations  # type: ignore[method-assign]
    return starts


async def test_rounds_start_an_interval_apart_whatever_they_take(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    ids = [await submit(client, f"clip {i}") for i in range(3)]
    starts = slow_rounds(client, clock, seconds=4.0)

    results = await wait_for_generations(client, ids, WaitSettings(**EVERY_10_S), clock=clock)

    assert all(isinstance(r, Generation) for r in results.values())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 10
    # 10 s start to start, not 10 s + the round's 4 s (the delay that grew with N, #12).
    assert gaps == [10.0] * len(gaps)


async def test_a_round_longer_than_the_interval_is_followed_at_once(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    ids = [await submit(client, f"clip {i}") for i in range(2)]
    starts = slow_rounds(client, clock, seconds=25.0)

    await wait_for_generations(client, ids, WaitSettings(**EVERY_10_S), clock=clock)

    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps and all(gap == 25.0 for gap in gaps)


async def test_ids_join_a_running_wait_and_leave_it_as_they_settle(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="doomed"))
    client = client_for(sim, clock)
    feed = WaitFeed()
    wait = asyncio.create_task(
        follow_generations(client, feed, WaitSettings(**EVERY_10_S), clock=clock)
    )
    first = await submit(client, "first")
    first_result = feed.add(first)
    await first_result  # settles while nothing else is tracked
    assert clock.now >= 180.0  # pending 60 s + processing 120 s of relay time

    second, doomed = await submit(client, "second"), await submit(client, "doomed")
    joined_at = clock.now
    results = [feed.add(second), feed.add(doomed, timeout_seconds=5000.0)]
    feed.close()
    done = await asyncio.gather(*results)
    everything = await wait

    assert isinstance(first_result.result(), Generation)
    assert isinstance(done[0], Generation) and done[0].state is GenerationState.COMPLETED
    assert isinstance(done[1], LumaGenerationFailed)
    # Each settled within one interval of the relay finishing it, counted from its join.
    assert clock.now <= joined_at + 180.0 + 10.0
    assert set(everything) == {first, second, doomed}


async def test_each_joined_id_has_its_own_deadline(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    feed = WaitFeed()
    wait = asyncio.create_task(
        follow_generations(client, feed, WaitSettings(**EVERY_10_S), clock=clock)
    )
    short = feed.add(await submit(client, "short"), timeout_seconds=30.0)
    long = feed.add(await submit(client, "long"), timeout_seconds=3600.0)
    feed.close()

    timed_out = await short
    assert isinstance(timed_out, LumaWaitTimeout)
    assert 30.0 <= clock.now <= 40.0  # its last poll at its own deadline
    assert isinstance(await long, Generation)
    await wait


async def test_a_broken_wait_fails_every_id_still_waiting_and_any_that_joins_later() -> None:
    feed = WaitFeed()
    waiting = feed.add("4665a07c-7641-4809-a133-10786201bb56")
    broken = RuntimeError("the wait broke")

    feed.fail(broken)
    late = feed.add("5665a07c-7641-4809-a133-10786201bb56")

    for future in (waiting, late):
        error = future.exception()
        # Each waiting generation's own outcome: a LumaError that names the cause.
        assert isinstance(error, LumaError) and "RuntimeError: the wait broke" in str(error)

    feed.fail(RuntimeError("a second cause"))  # the first cause stays the one told
    assert "the wait broke" in str(feed.add("6665a07c-7641-4809-a133-10786201bb56").exception())


async def test_a_chunk_answered_early_settles_its_ids_before_the_round_ends(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock, batch_size=2)
    ids = [await submit(client, f"clip {i}") for i in range(4)]
    clock.advance(600.0)  # all four completed on the relay
    stuck, release = ids[2], asyncio.Event()
    original = client.find_generations

    async def find_generations(chunk: Any) -> Any:
        if stuck in chunk:
            await release.wait()  # a slow answer for the second chunk
        return await original(chunk)

    client.find_generations = find_generations  # type: ignore[method-assign]
    feed = WaitFeed()
    futures = [feed.add(i) for i in ids]
    feed.close()
    wait = asyncio.create_task(
        follow_generations(client, feed, WaitSettings(**EVERY_10_S), clock=clock)
    )

    early = await asyncio.wait_for(asyncio.gather(*futures[:2]), 10.0)
    # The first chunk's ids are handed on while the second chunk's answer is still out.
    assert all(isinstance(g, Generation) for g in early)
    assert not futures[2].done() and not futures[3].done()
    release.set()
    assert all(isinstance(g, Generation) for g in await asyncio.gather(*futures[2:]))
    assert set(await wait) == set(ids)
