"""A wait never outlives its deadline by more than one call's bound, also when the relay
trickles its answers or the video-link lookup stalls (issue #11, point 5).

The relay stalls for real on a loopback socket; the client's deadline is a fraction of a
second, and an outer guard fails a test whose wait would not end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from luma_prefect import Generation, GenerationState, RetryPolicy
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.wait._engine import SystemClock, WaitSettings, wait_for_generations

DEADLINE = 0.3  # the client's total deadline per request
GUARD = 8.0


async def test_a_stalled_video_link_lookup_is_cut_and_the_generation_handed_on(
    sim: RelaySimulator, clock: FakeClock, client_for: Callable[..., object]
) -> None:
    gid = sim.create_generation("no link", state="completed")
    sim.add_fault(Fault(FaultKind.NO_DOWNLOAD_URL))
    # Each byte comes before a per-read timeout would fire: only a total deadline cuts it.
    sim.add_fault(Fault(FaultKind.TRICKLE_ANSWER, routes=("download_url",), delay_seconds=0.2))
    client = client_for(sim, clock, timeout_seconds=DEADLINE, retry=RetryPolicy(max_retries=0))
    settings = WaitSettings(link_grace_polls=1)

    started = time.monotonic()
    try:
        results = await asyncio.wait_for(
            wait_for_generations(client, [gid], settings, clock=clock),  # type: ignore[arg-type]
            GUARD,
        )
    except asyncio.TimeoutError:
        pytest.fail("the wait's video-link lookup has no deadline")
    took = time.monotonic() - started

    generation = results[gid]
    assert isinstance(generation, Generation)
    assert generation.state is GenerationState.COMPLETED
    assert generation.video is not None and generation.video.download_url is None
    assert sim.counters().requests["download_url"] == 2  # one grace poll, then handed on
    assert took < 2 * DEADLINE + 2.0


async def test_a_wait_ends_within_one_call_s_bound_of_its_deadline(
    sim: RelaySimulator, client_for: Callable[..., object]
) -> None:
    gid = sim.create_generation("trickling relay", state="processing")
    sim.add_fault(Fault(FaultKind.TRICKLE_ANSWER, routes=("query",), delay_seconds=0.2))
    real = SystemClock()
    client = client_for(sim, real, timeout_seconds=DEADLINE, retry=RetryPolicy(max_retries=0))
    timeout = 0.6
    settings = WaitSettings(
        timeout_seconds=timeout, poll_interval_seconds=0.05, max_poll_interval_seconds=0.05
    )

    started = time.monotonic()
    try:
        results = await asyncio.wait_for(
            wait_for_generations(client, [gid], settings, clock=real),  # type: ignore[arg-type]
            GUARD,
        )
    except asyncio.TimeoutError:
        pytest.fail("the wait outlived its deadline by far more than one call")
    took = time.monotonic() - started

    assert not isinstance(results[gid], Generation)
    # The deadline, plus at most one call's bound, plus a loaded machine's slack.
    assert took < timeout + DEADLINE + 1.0, took
