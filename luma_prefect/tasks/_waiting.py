"""Tasks that wait for generations: one task run per wait, however many polls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from prefect import get_run_logger, task

from luma_prefect._exceptions import (
    LumaError,
)
from luma_prefect._ids import check_generation_id
from luma_prefect._models import Generation, GenerationId
from luma_prefect.tasks import _common
from luma_prefect.tasks import _names as names
from luma_prefect.tasks._common import (
    READ_OPTIONS,
    CredentialsInput,
    StatesInput,
    relay_client,
)
from luma_prefect.tasks._progress import WaitProgress
from luma_prefect.wait._engine import (
    LOG_EACH_ID_UP_TO,
    WaitFeed,
    WaitSettings,
    follow_generations,
    normalise_states,
)
from luma_prefect.wait._engine import wait_for_generations as _wait_engine


@task(
    name="wait-for-generation", task_run_name=names.wait_name, tags=[names.RUN_TAG], **READ_OPTIONS
)
async def wait_for_generation(
    credentials: CredentialsInput,
    generation_id: GenerationId,
    until: StatesInput = ("completed",),
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    progress_artifact: bool = True,
) -> Generation:
    """Wait, in one task run, until the generation reaches a state in `until`.

    Raises `LumaGenerationFailed` when it fails (and `failed` is not in `until`),
    `LumaWaitTimeout` (with the last generation seen) past the deadline, `LumaAuthError` at
    once on a refused key. Relay hiccups (5xx, timeouts, malformed answers, a 404 right after
    submit) are absorbed inside the wait. With `progress_artifact` (the default) a progress
    artifact shows the state, the time waited and the relay's estimate, updated on each
    state change and otherwise at most every 10 s.

    Example:
        ```python
        from luma_prefect.tasks import wait_for_generation

        done = await wait_for_generation("luma-relay", generation.id, timeout_seconds=900)
        started = await wait_for_generation("luma-relay", generation.id, until=["processing"])
        ```
    """
    results = await _wait(
        credentials,
        [generation_id],
        until,
        timeout_seconds,
        poll_interval_seconds,
        max_poll_interval_seconds,
        progress_artifact,
    )
    outcome = results[0]
    if isinstance(outcome, LumaError):
        raise outcome
    assert outcome is not None  # return_when="all" settles every id
    return outcome


@task(
    name="wait-for-generations",
    task_run_name=names.wait_many_name,
    tags=[names.RUN_TAG],
    **READ_OPTIONS,
)
async def wait_for_generations(
    credentials: CredentialsInput,
    generation_ids: list[GenerationId],
    until: StatesInput = ("completed",),
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    batch_size: int = 50,
    return_exceptions: bool = False,
    return_when: Literal["all", "first"] = "all",
    progress_artifact: bool = True,
) -> list[Generation | LumaError | None]:
    """Wait for many generations at once, in one task run, polling them through the batch
    route (about `ceil(N / batch_size)` requests a round instead of N).

    Each id leaves the wait when it reaches a target. With `return_exceptions=True` the list
    holds, per id, the `Generation` or the `LumaError` that ended its wait; otherwise the
    first error (in the order asked) is raised once every id is settled.
    With `return_when="first"` it returns as soon as any id settled, with `None` for the
    ids still waiting: process the settled ones and wait again for the rest.
    With `progress_artifact` (the default) a progress artifact shows how many settled.

    Example:
        ```python
        from luma_prefect.tasks import wait_for_generations

        results = await wait_for_generations("luma-relay", ids, return_exceptions=True)
        done = [r for r in results if not isinstance(r, Exception)]
        ```
    """
    results = await _wait(
        credentials,
        generation_ids,
        until,
        timeout_seconds,
        poll_interval_seconds,
        max_poll_interval_seconds,
        progress_artifact,
        return_when=return_when,
        batch_size=batch_size,
    )
    if not return_exceptions:
        for outcome in results:
            if isinstance(outcome, LumaError):
                raise outcome
    return results


async def _wait(
    credentials: CredentialsInput,
    generation_ids: Sequence[str],
    until: StatesInput,
    timeout_seconds: float,
    poll_interval_seconds: float,
    max_poll_interval_seconds: float,
    progress_artifact: bool,
    return_when: Literal["all", "first"] = "all",
    **client_options: Any,
) -> list[Generation | LumaError | None]:
    # Prefect does not validate task parameters: the ids are checked here, where they enter.
    ids = [check_generation_id(i) for i in generation_ids]
    settings = WaitSettings(
        until=normalise_states(until),
        timeout_seconds=timeout_seconds,
        poll_interval_seconds=poll_interval_seconds,
        max_poll_interval_seconds=max(max_poll_interval_seconds, poll_interval_seconds),
    )
    logger = get_run_logger()
    clock = _common.wait_clock
    progress = WaitProgress(ids, clock.monotonic) if progress_artifact else None
    if progress is not None:
        await progress.start()
    try:
        async with relay_client(credentials, **client_options) as client:
            results = await _wait_engine(
                client,
                ids,
                settings,
                clock=clock,
                logger=logger,
                on_round=progress.round if progress is not None else None,
                return_when=return_when,
            )
    except Exception as exc:
        if progress is not None:
            await progress.fail(exc)
        raise
    if progress is not None:
        await progress.finish(results)
    return [results.get(i) for i in ids]


@task(
    name="wait-for-generations",
    task_run_name=names.follow_name,
    tags=[names.RUN_TAG],
    **READ_OPTIONS,
)
async def follow_generations_task(
    credentials: CredentialsInput,
    feed: WaitFeed,
    expected: int,
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    batch_size: int = 50,
    progress_artifact: bool = True,
) -> int:
    """One wait, in one task run, for every generation a batch adds to `feed` as it goes.

    Each id has `timeout_seconds` from when it joined; its result goes to the feed as soon
    as the poll that settled it returns. Ends once the feed is closed and every id settled;
    returns the number settled. `expected`: how many the batch will add (its name, its
    progress). Per-id INFO lines up to 25 generations, else one summary line per round
    with news. No Prefect timeout: ids join for as long as the batch runs, and the engine
    ends each one's wait within one call of its own deadline.
    """
    clock = _common.wait_clock
    progress = WaitProgress([], clock.monotonic, expected=expected) if progress_artifact else None
    try:
        # In the try: whatever fails here must reach the generations waiting on the feed.
        settings = WaitSettings(
            timeout_seconds=timeout_seconds,
            poll_interval_seconds=poll_interval_seconds,
            max_poll_interval_seconds=max(max_poll_interval_seconds, poll_interval_seconds),
        )
        if progress is not None:
            await progress.start()
        async with relay_client(credentials, batch_size=batch_size) as client:
            results = await follow_generations(
                client,
                feed,
                settings,
                clock=clock,
                logger=get_run_logger(),
                on_round=progress.round if progress is not None else None,
                log_each=expected <= LOG_EACH_ID_UP_TO,
            )
    except BaseException as exc:
        feed.fail(exc)
        if progress is not None and isinstance(exc, Exception):
            await progress.fail(exc)
        raise
    if progress is not None:
        await progress.finish(results)
    return len(results)
