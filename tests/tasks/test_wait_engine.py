"""The wait engine against the relay simulator: targets, failures, deadline, intervals, styles.

Real loopback HTTP, fake time: `FakeClock` moves the engine's clock and the simulator's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from luma_prefect import (
    Generation,
    GenerationRequest,
    GenerationState,
    LumaClient,
    LumaConfigurationError,
    LumaGenerationFailed,
    LumaRequestError,
    LumaWaitTimeout,
)
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.wait._engine import (
    SystemClock,
    WaitSettings,
    normalise_states,
    wait_for_generations,
)

MakeClient = Callable[..., LumaClient]


async def submit(client: LumaClient, prompt: str = "a red fox in the snow") -> str:
    return (await client.submit_generation(GenerationRequest(prompt=prompt))).id


def record_polls(client: LumaClient, clock: FakeClock) -> list[tuple[float, GenerationState]]:
    """Wrap the client's single query to note (fake time, state) of every poll answered."""
    polls: list[tuple[float, GenerationState]] = []
    original = client.get_generation

    async def get_generation(generation_id: str) -> Generation:
        at = clock.monotonic()
        generation = await original(generation_id)
        polls.append((at, generation.state))
        return generation

    client.get_generation = get_generation  # type: ignore[method-assign]
    return polls


# -- until ------------------------------------------------------------------------------


async def test_waits_until_completed_in_fake_time(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    started = time.perf_counter()

    results = await wait_for_generations(client, [gid], WaitSettings(), clock=clock)

    generation = results[gid]
    assert isinstance(generation, Generation)
    assert generation.state is GenerationState.COMPLETED
    assert generation.video is not None and generation.video.download_url
    # Completes at 180 s of relay time; found by a poll no later than one max interval after.
    assert 180.0 <= clock.now <= 180.0 + 30.0
    assert time.perf_counter() - started < 3.0
    assert sim.counters().requests.get("query", 0) >= 2


async def test_processing_as_target_returns_while_still_processing(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    settings = WaitSettings(
        until=normalise_states(["processing"]),
        poll_interval_seconds=5.0,
        max_poll_interval_seconds=5.0,
    )

    results = await wait_for_generations(client, [gid], settings, clock=clock)

    generation = results[gid]
    assert isinstance(generation, Generation)
    assert generation.state is GenerationState.PROCESSING
    assert 60.0 <= clock.now <= 65.0
    assert sim.generation(gid)["state"] == "processing"  # it really is still running


async def test_target_passed_between_two_polls_still_ends_the_wait(
    make_sim: Callable[..., RelaySimulator], client_for: MakeClient
) -> None:
    # Pending 10 s, processing 5 s, polled every 30 s: never seen processing, but completed
    # is past processing, so the wait must end there rather than poll on until the deadline.
    sim = make_sim(pending_seconds=10.0, processing_seconds=5.0)
    clock = FakeClock(sim)
    client = client_for(sim, clock)
    gid = await submit(client)
    settings = WaitSettings(
        until=normalise_states("processing"),
        timeout_seconds=600.0,
        poll_interval_seconds=30.0,
        max_poll_interval_seconds=30.0,
    )

    results = await wait_for_generations(client, [gid], settings, clock=clock)

    generation = results[gid]
    assert isinstance(generation, Generation), generation
    assert generation.state is GenerationState.COMPLETED
    assert clock.now == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("completed", {GenerationState.COMPLETED}),
        (GenerationState.FAILED, {GenerationState.FAILED}),
        (["processing", GenerationState.COMPLETED], {"processing", "completed"}),
        (("pending",), {GenerationState.PENDING}),
        ([GenerationState.COMPLETED, "completed"], {GenerationState.COMPLETED}),
    ],
)
def test_normalise_states_takes_values_and_strings(until: object, expected: set[object]) -> None:
    states = normalise_states(until)  # type: ignore[arg-type]
    assert states == frozenset(GenerationState(s) for s in expected)
    assert all(isinstance(s, GenerationState) for s in states)


@pytest.mark.parametrize("until", ["done", ["completed", "finished"], [], "success"])
def test_bad_state_names_are_refused(until: object) -> None:
    with pytest.raises(LumaConfigurationError):
        normalise_states(until)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [
        {"poll_interval_seconds": 0},
        {"timeout_seconds": -1},
        {"poll_interval_seconds": 10, "max_poll_interval_seconds": 5},
        {"backoff_factor": 0.5},
    ],
)
def test_impossible_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(LumaConfigurationError):
        WaitSettings(**settings)  # type: ignore[arg-type]


# -- failed -----------------------------------------------------------------------------


async def test_fail_generation_fault_gives_generation_failed(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="forbidden"))
    client = client_for(sim, clock)
    doomed = await submit(client, "a forbidden scene")
    fine = await submit(client, "a calm lake")

    results = await wait_for_generations(client, [doomed, fine], WaitSettings(), clock=clock)

    error = results[doomed]
    assert isinstance(error, LumaGenerationFailed)
    assert error.generation.id == doomed and error.generation_id == doomed
    assert error.generation.state is GenerationState.FAILED
    assert error.failure_reason == "Frame moderation failed"
    assert "Frame moderation failed" in str(error)
    assert isinstance(results[fine], Generation)
    assert results[fine].state is GenerationState.COMPLETED  # type: ignore[union-attr]


async def test_failure_ratio_gives_generation_failed_with_reason(
    make_sim: Callable[..., RelaySimulator], client_for: MakeClient
) -> None:
    sim = make_sim(failure_ratio=1.0)
    clock = FakeClock(sim)
    client = client_for(sim, clock)
    gid = await submit(client)

    results = await wait_for_generations(client, [gid], WaitSettings(), clock=clock)

    error = results[gid]
    assert isinstance(error, LumaGenerationFailed)
    assert error.failure_reason == "Generation failed: the upstream job errored"
    assert error.generation.failure_reason == error.failure_reason
    assert clock.now >= 180.0  # it failed at the end of processing, not before


async def test_failed_as_a_target_returns_the_generation(
    make_sim: Callable[..., RelaySimulator], client_for: MakeClient
) -> None:
    sim = make_sim(failure_ratio=1.0)
    clock = FakeClock(sim)
    client = client_for(sim, clock)
    gid = await submit(client)
    settings = WaitSettings(until=normalise_states(["completed", "failed"]))

    results = await wait_for_generations(client, [gid], settings, clock=clock)

    generation = results[gid]
    assert isinstance(generation, Generation)
    assert generation.state is GenerationState.FAILED
    assert generation.failure_reason == "Generation failed: the upstream job errored"


# -- deadline ---------------------------------------------------------------------------


async def test_deadline_raises_timeout_after_one_last_poll(
    make_sim: Callable[..., RelaySimulator], client_for: MakeClient
) -> None:
    sim = make_sim(pending_seconds=60.0, processing_seconds=100_000.0)
    clock = FakeClock(sim)
    client = client_for(sim, clock)
    gid = await submit(client)
    polls = record_polls(client, clock)
    started = time.perf_counter()

    results = await wait_for_generations(
        client, [gid], WaitSettings(timeout_seconds=1800.0), clock=clock
    )

    real_seconds = time.perf_counter() - started
    error = results[gid]
    assert isinstance(error, LumaWaitTimeout)
    assert error.generation_id == gid
    assert error.timeout_seconds == 1800.0
    assert error.generation is not None and error.generation.id == gid
    assert error.generation.state is GenerationState.PROCESSING
    assert "1800" in str(error) and "processing" in str(error)
    # Exactly one poll at (or after) the deadline, and it is the last one.
    at_or_after = [at for at, _ in polls if at >= 1800.0]
    assert at_or_after == [polls[-1][0]]
    assert polls[-1][0] == pytest.approx(1800.0)
    assert polls[-2][0] < 1800.0
    assert clock.now == pytest.approx(1800.0)
    assert real_seconds < 5.0
    assert len(polls) == sim.counters().requests["query"]


async def test_deadline_shorter_than_the_first_interval(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    polls = record_polls(client, clock)
    settings = WaitSettings(
        timeout_seconds=7.0, poll_interval_seconds=30.0, max_poll_interval_seconds=30.0
    )

    results = await wait_for_generations(client, [gid], settings, clock=clock)

    assert isinstance(results[gid], LumaWaitTimeout)
    assert [at for at, _ in polls] == [0.0, 7.0]


# -- intervals --------------------------------------------------------------------------


async def test_interval_grows_to_the_max_and_resets_on_change(
    make_sim: Callable[..., RelaySimulator], client_for: MakeClient
) -> None:
    # The official style sends no estimate_wait_seconds: the engine's own backoff shows.
    sim = make_sim(style="official", pending_seconds=100.0, processing_seconds=1000.0)
    clock = FakeClock(sim)
    client = client_for(sim, clock)
    gid = await submit(client)
    assert sim.generation(gid).get("estimate_wait_seconds") is None
    settings = WaitSettings(
        timeout_seconds=200.0,
        poll_interval_seconds=5.0,
        max_poll_interval_seconds=30.0,
        backoff_factor=1.5,
    )

    results = await wait_for_generations(client, [gid], settings, clock=clock)

    assert isinstance(results[gid], LumaWaitTimeout)
    growth = [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0]
    # Seen processing at 125.9 s: the interval starts again from the first one.
    again = [5.0, 7.5, 11.25, 16.875]
    assert clock.sleeps[: len(growth) + len(again)] == pytest.approx(growth + again)
    assert max(clock.sleeps) == 30.0
    assert clock.now == pytest.approx(200.0)


@pytest.mark.parametrize(
    ("pending", "processing", "expected_sleeps"),
    [
        # The relay estimates 120 s, then 60 s: the engine polls right when it says.
        (20.0, 100.0, [60.0, 60.0]),
        # An estimate below the poll interval does not make the engine poll faster.
        (1.0, 2.0, [5.0]),
    ],
)
async def test_interval_follows_the_relays_estimate(
    make_sim: Callable[..., RelaySimulator],
    client_for: MakeClient,
    pending: float,
    processing: float,
    expected_sleeps: list[float],
) -> None:
    sim = make_sim(pending_seconds=pending, processing_seconds=processing)
    clock = FakeClock(sim)
    client = client_for(sim, clock)
    gid = await submit(client)
    assert sim.generation(gid)["estimate_wait_seconds"] == pending + processing
    settings = WaitSettings(poll_interval_seconds=5.0, max_poll_interval_seconds=60.0)

    results = await wait_for_generations(client, [gid], settings, clock=clock)

    assert isinstance(results[gid], Generation)
    assert clock.sleeps == expected_sleeps


async def test_estimate_is_capped_by_the_max_interval(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)  # estimates 180 s
    settings = WaitSettings(poll_interval_seconds=5.0, max_poll_interval_seconds=45.0)

    await wait_for_generations(client, [gid], settings, clock=clock)

    assert clock.sleeps == [45.0, 45.0, 45.0, 45.0]


async def test_retry_after_of_a_single_429_is_honoured_by_the_client(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    gid = sim.create_generation("done", state="completed")
    sim.add_fault(Fault(FaultKind.RATE_LIMIT, retry_after="40", times=1, routes=("query",)))
    client = client_for(sim, clock)

    results = await wait_for_generations(client, [gid], WaitSettings(), clock=clock)

    assert isinstance(results[gid], Generation)
    assert clock.sleeps == [40.0]
    assert sim.counters().requests["query"] == 2
    assert sim.counters().faults_fired == {"rate_limit": 1}


async def test_retry_after_is_honoured_by_the_engine_when_the_client_gives_up(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    gid = sim.create_generation("done", state="completed")
    # Six 429 in a row: the client's five retries run out, the engine waits as told.
    sim.add_fault(Fault(FaultKind.RATE_LIMIT, retry_after="45", times=6, routes=("query",)))
    client = client_for(sim, clock)

    results = await wait_for_generations(client, [gid], WaitSettings(), clock=clock)

    assert isinstance(results[gid], Generation)
    assert clock.sleeps == [45.0] * 6  # five client retries, then the engine's own pause
    assert sim.counters().requests["query"] == 7


# -- styles -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["generations", "task", "official"])
async def test_every_style_waits_to_completed(
    make_sim: Callable[..., RelaySimulator], client_for: MakeClient, style: str
) -> None:
    sim = make_sim(style=style)
    clock = FakeClock(sim)
    client = client_for(sim, clock)
    first, second = await submit(client, "one"), await submit(client, "two")

    results = await wait_for_generations(client, [first, second], WaitSettings(), clock=clock)

    for gid in (first, second):
        generation = results[gid]
        assert isinstance(generation, Generation), generation
        assert generation.state is GenerationState.COMPLETED
        assert generation.video is not None and generation.video.download_url
        assert generation.best_video_url
    assert 180.0 <= clock.now <= 210.0
    counted = sim.counters().requests
    if style == "generations":
        assert "query" not in counted and counted["batch"] >= 2
    else:
        assert "batch" not in counted and counted["query"] >= 4


# -- cancellation -----------------------------------------------------------------------


async def test_a_real_wait_is_cancelled_promptly(
    make_sim: Callable[..., RelaySimulator],
) -> None:
    sim = make_sim(manual_clock=False, pending_seconds=1000.0, processing_seconds=1000.0)
    async with sim.credentials().get_client() as client:
        gid = await submit(client)
        settings = WaitSettings(poll_interval_seconds=60.0, max_poll_interval_seconds=60.0)
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                wait_for_generations(client, [gid], settings, clock=SystemClock()), timeout=0.2
            )
        elapsed = time.perf_counter() - started
        # The client still works after the cancelled wait.
        assert (await client.get_generation(gid)).state is GenerationState.PENDING
    assert elapsed < 0.6
    assert sim.counters().requests["query"] == 2


async def test_completed_ends_a_wait_for_failed_without_polling_to_the_deadline(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    settings = WaitSettings(until=normalise_states(["failed"]), timeout_seconds=3600.0)

    results = await wait_for_generations(client, [gid], settings, clock=clock)

    assert "can no longer reach failed" in str(results[gid])
    assert clock.now < 600.0  # settled once completed (180 s), not at the deadline


async def test_a_refused_poll_ends_the_pending_ids_but_keeps_settled_results(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    done = sim.create_generation(prompt="done", state="completed")
    waiting = await submit(client)

    async def refuse(generation_id: str) -> Generation:
        raise LumaRequestError("Querying failed with HTTP 400.", status_code=400)

    # The first round (both ids) goes through the batch route; once `done` has left, the
    # single query of the remaining id is refused.
    client.get_generation = refuse  # type: ignore[method-assign]

    results = await wait_for_generations(client, [done, waiting], WaitSettings(), clock=clock)

    assert isinstance(results[done], Generation)
    assert "HTTP 400" in str(results[waiting])
