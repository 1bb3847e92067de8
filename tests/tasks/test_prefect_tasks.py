"""The Prefect tasks: one task run per wait, no caches on reads, quiet logs, retries that make
sense, paid submits made once per flow run, usable from sync and async flows.

Real Prefect (the session's embedded API), real loopback HTTP, fake time through
`luma_prefect.tasks._common.wait_clock`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, get_client
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.states import Failed, State

from luma_prefect import (
    Generation,
    GenerationRequest,
    GenerationState,
    LumaAuthError,
    LumaConfigurationError,
    LumaError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaProtocolError,
    LumaRateLimitError,
    LumaRequestError,
    LumaServerError,
    LumaSubmitUncertainError,
    LumaTransportError,
    LumaWaitTimeout,
    RetryPolicy,
)
from luma_prefect import tasks as luma_tasks
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.tasks import (
    extend_generation,
    fetch_generation,
    fetch_generations,
    retry_on_transient_errors,
    submit_generation,
    wait_for_generation,
    wait_for_generations,
)
from luma_prefect.wait._engine import SystemClock

from .conftest import ListHandler

pytestmark = pytest.mark.usefixtures("prefect_harness")

REQUEST = GenerationRequest(prompt="a red fox in the snow")


@pytest.fixture
def clock(sim: RelaySimulator, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The fake clock, installed as the clock of every wait and client retry of the tasks."""
    fake = FakeClock(sim)
    monkeypatch.setattr(luma_tasks._common, "wait_clock", fake)
    return fake


@pytest.fixture
def creds(sim: RelaySimulator) -> LumaRelayCredentials:
    return sim.credentials()


@pytest.fixture
def task_logs() -> Iterator[ListHandler]:
    """Every record the task run loggers emit during the test."""
    handler = ListHandler()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


async def task_runs_of(flow_run_id: UUID) -> list[TaskRun]:
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def flow_run_id_of(state: State[Any]) -> UUID:
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return flow_run_id


# -- one wait, one task run ---------------------------------------------------------------


async def test_a_long_wait_is_one_task_run(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    gid = sim.create_generation("fox", state="pending")

    @flow
    async def wait_flow() -> Generation:
        return await wait_for_generation(
            creds, gid, poll_interval_seconds=5.0, max_poll_interval_seconds=5.0
        )

    state = await wait_flow(return_state=True)

    generation = await state.result()
    assert isinstance(generation, Generation)
    assert generation.state is GenerationState.COMPLETED
    polls = sim.counters().requests["query"]
    assert polls >= 30  # 180 s at 5 s a poll
    runs = await task_runs_of(flow_run_id_of(state))
    assert len(runs) == 1
    assert runs[0].name == f"wait {gid[:8]}"
    assert runs[0].state is not None and runs[0].state.is_completed()
    assert runs[0].run_count == 1


async def test_many_ids_are_one_task_run_with_batched_polls(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    ids = [sim.create_generation(f"fox {n}", state="pending") for n in range(60)]

    @flow
    async def wait_flow() -> list[Generation | LumaError | None]:
        return await wait_for_generations(creds, ids, batch_size=25, progress_artifact=True)

    state = await wait_flow(return_state=True)

    results = await state.result()
    assert [r.id for r in results] == ids  # type: ignore[union-attr]
    assert len(await task_runs_of(flow_run_id_of(state))) == 1
    counted = sim.counters().requests
    assert "query" not in counted
    assert counted["batch"] % 3 == 0  # ceil(60 / 25) per round
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id_of(state)]))
        )
    assert [(a.type, a.data) for a in artifacts] == [("progress", 100.0)]


# -- reads never cache --------------------------------------------------------------------


def test_read_tasks_never_cache() -> None:
    for read in (fetch_generation, fetch_generations, wait_for_generation, wait_for_generations):
        assert read.cache_policy is NO_CACHE, read.name
        assert read.retry_condition_fn is retry_on_transient_errors
        assert read.retries == 0  # the client's RetryPolicy is the one retry schedule
    for paid in (submit_generation, extend_generation):
        assert paid.retries == 0
        assert paid.cache_key_fn is not None


async def test_fetching_twice_in_a_flow_sees_the_state_move(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    gid = sim.create_generation("fox", state="pending")

    @flow
    async def fetch_flow() -> list[GenerationState]:
        states = [(await fetch_generation(creds, gid)).state]
        sim.advance(600)
        states.append((await fetch_generation(creds, gid)).state)
        both = await fetch_generations(creds, [gid, gid])
        states.extend(g.state for g in both)
        return states

    assert await fetch_flow() == [GenerationState.PENDING] + [GenerationState.COMPLETED] * 3
    assert sim.counters().requests["query"] == 2


# -- logs -----------------------------------------------------------------------------------


async def test_info_logs_only_on_state_changes(
    sim: RelaySimulator,
    clock: FakeClock,
    creds: LumaRelayCredentials,
    task_logs: ListHandler,
) -> None:
    gid = sim.create_generation("fox", state="pending")

    @flow
    async def wait_flow() -> Generation:
        return await wait_for_generation(
            creds, gid, poll_interval_seconds=5.0, max_poll_interval_seconds=5.0
        )

    await wait_flow()

    polls = sim.counters().requests["query"]
    about_it = [r for r in task_logs.records if r.levelno == logging.INFO and gid in r.getMessage()]
    lines = [r.getMessage() for r in about_it]
    # First seen pending, then processing, then completed: three changes, many polls.
    assert len(lines) == 3, lines
    assert polls > 3 * len(lines)
    for line, state in zip(lines, ["pending", "processing", "completed"], strict=True):
        assert f"is {state}" in line
        assert re.search(r"after \d+\.\d s", line), line
    assert "after 60.0 s" in lines[1] and "after 180.0 s" in lines[2]
    debug_or_warning = [
        r for r in task_logs.records if r.levelno > logging.INFO and gid in r.getMessage()
    ]
    assert debug_or_warning == []


# -- retries --------------------------------------------------------------------------------


def failed(exc: BaseException) -> State[Any]:
    return Failed(data=exc, message=str(exc))


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (LumaAuthError("no", status_code=401), False),
        (LumaNotFoundError("no", status_code=404), False),
        (LumaRequestError("no", status_code=400), False),
        (LumaConfigurationError("no"), False),
        (LumaSubmitUncertainError("maybe"), False),
        (LumaWaitTimeout("g", timeout_seconds=5.0), False),
        (
            LumaGenerationFailed(Generation(id="g", state=GenerationState.FAILED)),
            False,
        ),
        (LumaServerError("5xx", status_code=503), True),
        (LumaRateLimitError("429", status_code=429, retry_after=3.0), True),
        (LumaTransportError("reset"), True),
        (LumaProtocolError("half a body"), True),
        (RuntimeError("anything else"), True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_retry_condition(error: BaseException, retry: bool) -> None:
    task_run = TaskRun(task_key="k", dynamic_key="0", name="t", flow_run_id=uuid.uuid4())
    assert retry_on_transient_errors(fetch_generation, task_run, failed(error)) is retry


async def test_one_retry_schedule_reaches_the_relay_by_the_policy_s_attempts_only(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    gid = sim.create_generation("fox", state="completed")
    quick = fetch_generation.with_options(retry_delay_seconds=0)
    wrong = creds.model_copy(update={"api_key": "sk-wrong"})

    @flow
    async def refused() -> Generation:
        return await quick(wrong, gid)

    state = await refused(return_state=True)
    assert state.is_failed()
    with pytest.raises(LumaAuthError):
        await state.result()
    assert sim.counters().requests["query"] == 1  # no client retry, no Prefect retry
    runs = await task_runs_of(flow_run_id_of(state))
    assert [r.run_count for r in runs] == [1]

    sim.reset_counters()
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=503, routes=("query",)))

    @flow
    async def broken() -> Generation:
        return await quick(creds, gid)

    state = await broken(return_state=True)
    assert state.is_failed()
    # One retry schedule: the client's RetryPolicy (1 + 5 attempts), no Prefect retries
    # stacked on top (they made it 3 x 6 = 18 requests).
    assert sim.counters().requests["query"] == 1 + RetryPolicy().max_retries
    runs = await task_runs_of(flow_run_id_of(state))
    assert [r.run_count for r in runs] == [1]
    # The client's retries were slept through the injected clock, by the policy.
    assert len(clock.sleeps) == RetryPolicy().max_retries


# -- the wait task's outcomes -------------------------------------------------------------


async def test_wait_task_raises_timeout_with_the_last_generation(
    make_sim: Callable[..., RelaySimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim(processing_seconds=100_000.0)
    fake = FakeClock(sim)
    monkeypatch.setattr(luma_tasks._common, "wait_clock", fake)
    gid = sim.create_generation("slow", state="pending")

    @flow
    async def wait_flow() -> Generation:
        return await wait_for_generation(sim.credentials(), gid, timeout_seconds=1800.0)

    state = await wait_flow(return_state=True)

    with pytest.raises(LumaWaitTimeout) as caught:
        await state.result()
    assert caught.value.generation is not None
    assert caught.value.generation.state is GenerationState.PROCESSING
    assert fake.now == pytest.approx(1800.0)
    runs = await task_runs_of(flow_run_id_of(state))
    assert [r.run_count for r in runs] == [1]  # a timeout is not retried


async def test_wait_task_until_processing_and_failed(
    make_sim: Callable[..., RelaySimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim()
    monkeypatch.setattr(luma_tasks._common, "wait_clock", FakeClock(sim))
    creds = sim.credentials()
    running = sim.create_generation("fox", state="pending")
    broken = sim.create_generation("bad", state="failed", failure_reason="NSFW frame")

    @flow
    async def wait_flow() -> tuple[Generation, Generation]:
        started = await wait_for_generation(creds, running, until="processing")
        ended = await wait_for_generation(creds, broken, until=["completed", "failed"])
        return started, ended

    started, ended = await wait_flow()
    assert started.state is GenerationState.PROCESSING
    assert ended.state is GenerationState.FAILED

    @flow
    async def fail_flow() -> Generation:
        return await wait_for_generation(creds, broken)

    with pytest.raises(LumaGenerationFailed) as caught:
        await fail_flow()
    assert caught.value.failure_reason == "NSFW frame"
    assert caught.value.generation.id == broken


async def test_wait_task_refuses_a_bad_state_name_before_any_request(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    gid = sim.create_generation("fox", state="pending")

    @flow
    async def wait_flow() -> Generation:
        return await wait_for_generation(creds, gid, until=["finished"])

    with pytest.raises(LumaConfigurationError, match="finished"):
        await wait_flow()
    assert sim.counters().requests == {}


async def test_wait_for_generations_task_keeps_per_id_outcomes(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    done = sim.create_generation("done", state="completed")
    broken = sim.create_generation("bad", state="failed")
    later = sim.create_generation("later", state="pending")

    @flow
    async def together(ids: list[str], **options: Any) -> list[Generation | LumaError | None]:
        return await wait_for_generations(creds, ids, **options)

    outcomes = await together([later, broken, done], return_exceptions=True)
    assert isinstance(outcomes[0], Generation) and outcomes[0].id == later
    assert isinstance(outcomes[1], LumaGenerationFailed)
    assert isinstance(outcomes[2], Generation) and outcomes[2].id == done

    with pytest.raises(LumaGenerationFailed):
        await together([done, broken])

    fresh = sim.create_generation("fresh", state="pending")
    first = await together([fresh, done], return_when="first")
    assert first[0] is None and isinstance(first[1], Generation)


# -- paid submits, once ---------------------------------------------------------------------


async def test_equal_submits_in_one_flow_run_submit_once(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    @flow
    async def twice() -> tuple[Generation, Generation]:
        return await submit_generation(creds, REQUEST), await submit_generation(creds, REQUEST)

    first, second = await twice()

    assert first.id == second.id
    assert sim.counters().submits_accepted == 1


async def test_an_idempotency_key_submits_again(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    @flow
    async def twice() -> tuple[Generation, Generation, Generation]:
        return (
            await submit_generation(creds, REQUEST),
            await submit_generation(creds, REQUEST, idempotency_key="take-2"),
            await submit_generation(creds, REQUEST, idempotency_key="take-2"),
        )

    first, second, third = await twice()

    assert first.id != second.id and second.id == third.id
    assert sim.counters().submits_accepted == 2


async def test_a_retried_flow_run_submits_once(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    seen: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    async def flaky() -> Generation:
        generation = await submit_generation(creds, REQUEST)
        seen.append(generation.id)
        if len(seen) == 1:
            raise RuntimeError("the flow broke after the submit")
        return generation

    state = await flaky(return_state=True)

    assert state.is_completed()
    assert len(seen) == 2 and seen[0] == seen[1]
    assert sim.counters().submits_accepted == 1
    assert sim.counters().submits_by_prompt == {"a red fox in the snow": 1}


async def test_two_flow_runs_submit_twice(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    @flow
    async def once() -> Generation:
        return await submit_generation(creds, REQUEST)

    assert (await once()).id != (await once()).id
    assert sim.counters().submits_accepted == 2


# -- sync and async flows ---------------------------------------------------------------------


def test_tasks_work_from_a_sync_flow(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    # The tasks are async: a sync flow runs them through futures (a bare call would hand
    # back a coroutine, as for any async Prefect task).
    @flow
    def sync_flow() -> tuple[Generation, Generation, Generation]:
        submitted = submit_generation.submit(creds, REQUEST).result()
        done = wait_for_generation.submit(creds, submitted.id).result()
        request = GenerationRequest(prompt="and on")
        longer = extend_generation.submit(creds, done.id, request).result()
        return submitted, done, longer

    state = sync_flow(return_state=True)

    submitted, done, longer = state.result()
    assert isinstance(done, Generation) and done.id == submitted.id
    assert done.state is GenerationState.COMPLETED
    assert isinstance(longer, Generation) and longer.id != done.id
    assert sim.counters().submits_accepted == 2
    assert clock.now >= 180.0


async def test_tasks_work_from_an_async_flow(
    sim: RelaySimulator, clock: FakeClock, creds: LumaRelayCredentials
) -> None:
    @flow
    async def async_flow() -> tuple[Generation, Generation]:
        submitted = await submit_generation(creds, REQUEST)
        done = await wait_for_generation(creds, submitted.id)
        longer = await extend_generation(creds, done.id, GenerationRequest(prompt="and on"))
        return done, longer

    done, longer = await async_flow()

    assert done.state is GenerationState.COMPLETED
    assert longer.state is GenerationState.PENDING
    assert sim.counters().submits_accepted == 2


def test_the_default_wait_clock_is_the_real_one() -> None:
    assert isinstance(luma_tasks._common.wait_clock, SystemClock)


async def test_a_wait_that_gave_up_is_not_restarted_by_prefect(
    sim: RelaySimulator, clock: FakeClock, client_for: Any
) -> None:
    """The wait's own error budget already absorbed the trouble: a Prefect retry would
    start the whole wait again with a fresh deadline."""
    from luma_prefect.simulator import Fault, FaultKind
    from luma_prefect.wait._engine import WaitSettings, wait_for_generations

    client = client_for(sim, clock)
    generation_id = sim.create_generation(prompt="busy relay", state="processing")
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=503, routes=("query",)))
    settings = WaitSettings(max_consecutive_errors=2)

    results = await wait_for_generations(client, [generation_id], settings, clock=clock)

    error = results[generation_id]
    assert isinstance(error, LumaServerError)
    task_run = TaskRun(task_key="k", dynamic_key="0", name="t", flow_run_id=uuid.uuid4())
    assert retry_on_transient_errors(fetch_generation, task_run, failed(error)) is False


def test_every_task_has_a_prefect_timeout_and_none_retries_on_top_of_the_client() -> None:
    static = [fetch_generation, fetch_generations, submit_generation, extend_generation]
    static += [luma_tasks.download_generation, luma_tasks.publish_generation]
    for task in static:
        assert task.timeout_seconds and task.timeout_seconds > 0, task.name
    for task in [*static, wait_for_generation, wait_for_generations]:
        assert task.retries == 0, task.name
