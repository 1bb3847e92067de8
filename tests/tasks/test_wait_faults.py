"""Every misbehaviour of the relay simulator, met during a wait: absorbed or handled."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import pytest

from luma_prefect import (
    Generation,
    GenerationRequest,
    GenerationState,
    LumaAuthError,
    LumaClient,
    LumaNotFoundError,
    LumaServerError,
)
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.wait._engine import WaitSettings, wait_for_generations

from .conftest import ListHandler

MakeClient = Callable[..., LumaClient]


async def submit(client: LumaClient, prompt: str = "a red fox in the snow") -> str:
    return (await client.submit_generation(GenerationRequest(prompt=prompt))).id


async def wait_one(client: LumaClient, gid: str, clock: FakeClock, **settings: float) -> Generation:
    results = await wait_for_generations(client, [gid], WaitSettings(**settings), clock=clock)  # type: ignore[arg-type]
    generation = results[gid]
    assert isinstance(generation, Generation), generation
    assert generation.state is GenerationState.COMPLETED
    return generation


# -- transient trouble, absorbed ----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 524])
async def test_server_error_bursts_are_absorbed(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient, status: int
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    # Eight in a row: more than the client's five retries, so one round fails as a whole.
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=status, times=8, routes=("query",)))

    await wait_one(client, gid, clock)

    counters = sim.counters()
    assert counters.faults_fired == {"server_error": 8}
    assert counters.requests["query"] >= 9
    assert sim.faults() == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.SLOW, delay_seconds=0.02, times=3, routes=("query",)),
        Fault(FaultKind.DROP_CONNECTION, times=3, routes=("query",)),
        Fault(FaultKind.DROP_CONNECTION, times=8, routes=("query",), after_bytes=0),
        Fault(FaultKind.MALFORMED_JSON, times=3, routes=("query",)),
        Fault(FaultKind.ERROR_BODY_200, times=3, routes=("query",)),
        Fault(FaultKind.ERROR_BODY_200, times=8, routes=("query",)),
        Fault(FaultKind.RATE_LIMIT, times=3, routes=("query",)),
        Fault(FaultKind.RATE_LIMIT, retry_after="20", times=3, routes=("query",)),
    ],
    ids=lambda f: f"{f.kind.value}-x{f.times}",
)
async def test_transient_faults_are_absorbed(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient, fault: Fault
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    sim.add_fault(fault)

    generation = await wait_one(client, gid, clock)

    assert generation.id == gid
    assert sim.counters().faults_fired == {fault.kind.value: fault.times}
    assert clock.now < 1800.0


async def test_rate_limit_without_retry_after_backs_off_within_the_cap(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    gid = sim.create_generation("done", state="completed")
    sim.add_fault(Fault(FaultKind.RATE_LIMIT, times=4, routes=("query",)))
    client = client_for(sim, clock)

    await wait_one(client, gid, clock)

    # The client's exponential backoff (0.5, 1, 2, 4 s, +-25 %), nothing waited forever.
    assert len(clock.sleeps) == 4
    for sleep, base in zip(clock.sleeps, [0.5, 1.0, 2.0, 4.0], strict=True):
        assert base * 0.75 <= sleep <= base * 1.25


async def test_malformed_answers_count_against_the_budget_but_pass(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    gid = sim.create_generation("done", state="completed")
    sim.add_fault(Fault(FaultKind.MALFORMED_JSON, times=3, routes=("query",)))
    client = client_for(sim, clock)

    await wait_one(client, gid, clock, poll_interval_seconds=5.0, max_poll_interval_seconds=60.0)

    # Not retried by the client (the body came): three failed rounds, backing off 5, 10, 20.
    assert clock.sleeps == [5.0, 10.0, 20.0]
    assert sim.counters().requests["query"] == 4


# -- not found ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["generations", "task", "official"])
async def test_not_found_right_after_submit_is_absorbed(
    make_sim: Callable[..., RelaySimulator], client_for: MakeClient, style: str
) -> None:
    sim = make_sim(style=style)
    clock = FakeClock(sim)
    # The relay does not know a new generation for its first 20 s (the task style says so
    # with HTTP 400 task_not_exist, the others with 404).
    sim.add_fault(Fault(FaultKind.NOT_FOUND_AFTER_SUBMIT, seconds=20.0))
    client = client_for(sim, clock)
    gid = await submit(client)

    await wait_one(client, gid, clock)

    assert sim.counters().faults_fired["not_found_after_submit"] >= 2


async def test_an_id_the_relay_never_knows_ends_after_the_grace(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    unknown = str(uuid.uuid4())
    client = client_for(sim, clock)

    results = await wait_for_generations(
        client, [unknown], WaitSettings(not_found_grace_seconds=60.0), clock=clock
    )

    error = results[unknown]
    assert isinstance(error, LumaNotFoundError)
    assert error.generation_id == unknown and error.status_code == 404
    assert unknown in str(error)
    assert 60.0 <= clock.now <= 90.0


async def test_an_unknown_id_among_many_does_not_hide_the_others(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    unknown = str(uuid.uuid4())
    client = client_for(sim, clock)
    known = [await submit(client, f"fox {n}") for n in range(3)]

    results = await wait_for_generations(client, [*known, unknown], WaitSettings(), clock=clock)

    assert list(results) == [*known, unknown]
    assert isinstance(results[unknown], LumaNotFoundError)
    assert all(isinstance(results[g], Generation) for g in known)
    assert "query" not in sim.counters().requests


# -- presentation faults --------------------------------------------------------------------


async def test_unknown_state_keeps_polling_and_is_logged_once(
    sim: RelaySimulator,
    clock: FakeClock,
    client_for: MakeClient,
    wait_logger: logging.Logger,
    log_records: ListHandler,
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    # Until it is done, the relay only says "waiting_for_gpu".
    sim.add_fault(Fault(FaultKind.UNKNOWN_STATE, generation_id=gid))

    results = await wait_for_generations(
        client, [gid], WaitSettings(), clock=clock, logger=wait_logger
    )

    assert isinstance(results[gid], Generation)
    unknown_polls = sim.counters().faults_fired["unknown_state"]
    assert unknown_polls >= 3
    warnings = log_records.messages(logging.WARNING)
    assert len(warnings) == 1
    assert "waiting_for_gpu" in warnings[0] and gid in warnings[0]


async def test_no_download_url_is_asked_for_once_completed(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    sim.add_fault(Fault(FaultKind.NO_DOWNLOAD_URL))

    generation = await wait_one(client, gid, clock)

    assert generation.video is not None and generation.video.url
    assert generation.video.download_url is not None
    assert generation.video.download_url.startswith(f"{sim.base_url}/cdn/{gid}/video_raw.mp4")
    assert generation.video.download_url != generation.video.url
    assert generation.video_raw is None
    counted = sim.counters().requests
    assert counted["download_url"] == 1


async def test_no_link_at_all_is_handed_on_after_the_link_grace(
    sim: RelaySimulator,
    clock: FakeClock,
    client_for: MakeClient,
    wait_logger: logging.Logger,
    log_records: ListHandler,
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    sim.add_fault(Fault(FaultKind.NO_DOWNLOAD_URL))
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, routes=("download_url",)))

    results = await wait_for_generations(
        client, [gid], WaitSettings(link_grace_polls=2), clock=clock, logger=wait_logger
    )

    generation = results[gid]
    assert isinstance(generation, Generation)
    assert generation.video is not None and generation.video.download_url is None
    assert generation.best_video_url == generation.video.url
    # Three attempts at the link (two grace polls, then hand on), six requests each.
    assert sim.counters().requests["download_url"] == 3 * 6
    assert any("no no-watermark link" in m for m in log_records.messages(logging.WARNING))


async def test_no_batch_route_falls_back_to_single_queries(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    ids = [await submit(client, f"fox {n}") for n in range(3)]
    sim.add_fault(Fault(FaultKind.NO_BATCH_ROUTE))

    results = await wait_for_generations(client, ids, WaitSettings(), clock=clock)

    assert all(isinstance(results[g], Generation) for g in ids)
    counted = sim.counters()
    assert counted.requests["batch"] == 1  # tried once, then remembered as missing
    assert counted.requests["query"] >= 2 * len(ids)
    assert not client.batch_supported


async def test_expired_links_do_not_break_a_wait(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    sim.add_fault(Fault(FaultKind.EXPIRED_LINK))

    generation = await wait_one(client, gid, clock)

    assert generation.video is not None and generation.video.download_url


# -- errors that end the wait -----------------------------------------------------------------


@pytest.mark.parametrize("many", [False, True])
async def test_a_refused_key_ends_the_wait_at_once(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient, many: bool
) -> None:
    ids = [sim.create_generation("x", state="pending") for _ in range(3 if many else 1)]
    wrong = sim.credentials().model_copy(update={"api_key": "sk-wrong"})
    client = wrong.get_client(sleep=clock.sleep)
    try:
        with pytest.raises(LumaAuthError) as caught:
            await wait_for_generations(client, ids, WaitSettings(), clock=clock)
    finally:
        await client.aclose()

    assert caught.value.status_code == 401
    assert "sk-wrong" not in str(caught.value)
    assert sum(sim.counters().requests.values()) == 1
    assert clock.sleeps == []


async def test_an_exhausted_error_budget_gives_up_without_hanging(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    client = client_for(sim, clock)
    gid = await submit(client)
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=503, routes=("query",)))

    results = await wait_for_generations(client, [gid], WaitSettings(), clock=clock)

    error = results[gid]
    assert isinstance(error, LumaServerError)
    assert error.generation_id == gid
    assert "Gave up" in str(error) and gid in str(error)
    # Long before the 30-minute deadline: five minutes of trouble at most, plus one round.
    assert clock.now <= 300.0 + 60.0
    assert sim.counters().requests["query"] <= 10 * 6


async def test_error_budget_counts_failed_rounds(
    sim: RelaySimulator, clock: FakeClock, client_for: MakeClient
) -> None:
    ids = [sim.create_generation(f"x{n}", state="pending") for n in range(2)]
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=502, routes=("batch",)))
    client = client_for(sim, clock)
    settings = WaitSettings(max_consecutive_errors=3, max_error_seconds=1e9)

    results = await wait_for_generations(client, ids, settings, clock=clock)

    for gid in ids:
        error = results[gid]
        assert isinstance(error, LumaServerError) and error.generation_id == gid
        assert "after 3 failed poll(s)" in str(error)
    assert results[ids[0]] is not results[ids[1]]
    assert sim.counters().requests["batch"] == 3 * 6
