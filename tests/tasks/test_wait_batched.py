"""Many generations in one wait: batch requests per round, ids leaving, errors kept per id."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable

import pytest

from luma_prefect import (
    Generation,
    GenerationState,
    LumaClient,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaWaitTimeout,
)
from luma_prefect.simulator import RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.wait._engine import WaitSettings, wait_for_generations

from .conftest import ListHandler

MakeClient = Callable[..., LumaClient]


def staggered(sim: RelaySimulator, groups: int, per_group: int, gap: float) -> list[list[str]]:
    """Seed `groups` groups of pending generations, `gap` simulated seconds apart.

    The first group completes first; with pending 60 s + processing 120 s and gap 60 s,
    three groups complete 60, 120, 180 s after the last one was seeded.
    """
    seeded: list[list[str]] = []
    for index in range(groups):
        if index:
            sim.advance(gap)
        seeded.append(
            [sim.create_generation(f"g{index}-{n}", state="pending") for n in range(per_group)]
        )
    return seeded


async def test_120_ids_cost_ceil_n_over_batch_size_requests_per_round(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    first, second, third = staggered(sim, groups=3, per_group=40, gap=60.0)
    ids = first + second + third
    client = client_for(sim, clock, batch_size=50)
    batches_before_sleep: list[int] = []
    clock.hooks.append(lambda _: batches_before_sleep.append(sim.counters().requests["batch"]))
    settings = WaitSettings(poll_interval_seconds=10.0, max_poll_interval_seconds=60.0)

    results = await wait_for_generations(client, ids, settings, clock=clock)

    assert list(results) == ids
    assert all(
        isinstance(r, Generation) and r.state is GenerationState.COMPLETED for r in results.values()
    )
    counted = sim.counters()
    # Rounds at 0, 60, 120 and 180 s ask 120, 120, 80 and 40 ids (a group leaves after the
    # round that saw it completed): ceil(n / 50) batch requests each.
    totals = [*batches_before_sleep, counted.requests["batch"]]
    per_round = [after - before for before, after in zip([0, *totals[:-1]], totals, strict=True)]
    assert per_round == [math.ceil(n / 50) for n in (120, 120, 80, 40)] == [3, 3, 2, 1]
    assert "query" not in counted.requests
    # Ids leave the wait as they complete: later groups were asked more often.
    polls = counted.queries_by_generation
    assert {polls[g] for g in first} == {2}
    assert {polls[g] for g in second} == {3}
    assert {polls[g] for g in third} == {4}
    assert clock.now == pytest.approx(180.0)


@pytest.mark.parametrize("batch_size", [1, 7, 100])
async def test_batch_size_sets_the_requests_per_round(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient, batch_size: int
) -> None:
    ids = [sim.create_generation(f"x{n}", state="pending") for n in range(30)]
    client = client_for(sim, clock, batch_size=batch_size)
    settings = WaitSettings(poll_interval_seconds=30.0, max_poll_interval_seconds=60.0)

    await wait_for_generations(client, ids, settings, clock=clock)

    rounds = 4  # 0, 60, 120, 180 s: the estimate says 180, capped at 60 s
    assert sim.counters().requests["batch"] == rounds * math.ceil(30 / batch_size)


async def test_errors_and_timeouts_do_not_lose_the_others(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    done = sim.create_generation("done", state="completed")
    failed = sim.create_generation("failed", state="failed", failure_reason="NSFW frame")
    later = sim.create_generation("later", state="processing")  # completes at 120 s
    slow = sim.create_generation("slow", state="pending")  # would complete at 180 s
    unknown = str(uuid.uuid4())
    ids = [slow, done, unknown, failed, later]
    client = client_for(sim, clock)
    settings = WaitSettings(timeout_seconds=150.0, not_found_grace_seconds=30.0)

    results = await wait_for_generations(client, ids, settings, clock=clock)

    assert list(results) == ids  # in the order asked
    assert isinstance(results[done], Generation)
    assert isinstance(results[later], Generation)
    assert results[later].state is GenerationState.COMPLETED  # type: ignore[union-attr]
    failure = results[failed]
    assert isinstance(failure, LumaGenerationFailed) and failure.failure_reason == "NSFW frame"
    timeout = results[slow]
    assert isinstance(timeout, LumaWaitTimeout)
    assert timeout.generation is not None and timeout.generation.state is GenerationState.PROCESSING
    assert isinstance(results[unknown], LumaNotFoundError)
    assert clock.now == pytest.approx(150.0)


async def test_return_when_first_returns_only_the_settled(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    (early,), (late,) = staggered(sim, groups=2, per_group=1, gap=60.0)
    client = client_for(sim, clock)
    settings = WaitSettings(poll_interval_seconds=10.0, max_poll_interval_seconds=60.0)

    first = await wait_for_generations(
        client, [late, early], settings, clock=clock, return_when="first"
    )

    # Seeded 60 s apart, they complete 120 s and 180 s after the second was seeded.
    assert list(first) == [early]
    assert isinstance(first[early], Generation)
    assert clock.now == pytest.approx(120.0)
    rest = await wait_for_generations(client, [late], settings, clock=clock, return_when="first")
    assert list(rest) == [late]
    assert clock.now == pytest.approx(180.0)


async def test_progress_is_reported_as_ids_settle(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    groups = staggered(sim, groups=3, per_group=2, gap=60.0)
    ids = [g for group in groups for g in group]
    client = client_for(sim, clock)
    seen: list[tuple[int, int]] = []

    async def on_progress(done: int, total: int) -> None:
        seen.append((done, total))

    await wait_for_generations(client, ids, WaitSettings(), clock=clock, on_progress=on_progress)

    settled = [done for done, _ in seen]
    assert settled == sorted(settled) and settled[-1] == 6
    assert {total for _, total in seen} == {6}
    assert {2, 4, 6} <= set(settled)


async def test_duplicate_ids_are_waited_for_once(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    gid = sim.create_generation("x", state="completed")
    other = sim.create_generation("y", state="completed")
    client = client_for(sim, clock)

    results = await wait_for_generations(client, [gid, other, gid], WaitSettings(), clock=clock)

    assert list(results) == [gid, other]
    assert sim.counters().queries_by_generation == {gid: 1, other: 1}


async def test_large_waits_log_one_summary_per_change_not_per_id(
    sim: RelaySimulator,
    clock: FakeClock,
    client_for: MakeClient,
    wait_logger: logging.Logger,
    log_records: ListHandler,
) -> None:
    groups = staggered(sim, groups=3, per_group=10, gap=60.0)
    ids = [g for group in groups for g in group]
    client = client_for(sim, clock)
    settings = WaitSettings(poll_interval_seconds=5.0, max_poll_interval_seconds=5.0)

    await wait_for_generations(client, ids, settings, clock=clock, logger=wait_logger)

    rounds = sim.counters().requests["batch"]
    info = log_records.messages(logging.INFO)
    assert rounds >= 30
    # Changes happen in four rounds: first sight, and each group's completion (the third
    # group turns processing in the round the first completes).
    assert len(info) == 4, info
    assert not any(gid in line for line in info for gid in ids)
    assert info[-1].startswith("After 180 s: 30 done, 0 ended otherwise")
