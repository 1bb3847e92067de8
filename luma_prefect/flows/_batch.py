"""The steps the flows chain, composed: submit once, wait, deliver; one generation or a batch.

Kept apart from `_flows.py` so that module shows only what users run. The submit is
`_submit.py`'s, the delivery under a claim `_deliver.py`'s; here they meet the wait (one
for the whole batch) and the report. Every generation-level error becomes a
`GenerationOutcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timezone
from typing import Any, Literal

from prefect import get_run_logger

from luma_prefect._exceptions import (
    LumaError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaWaitTimeout,
)
from luma_prefect._ids import check_generation_id
from luma_prefect._models import Generation, GenerationRequest
from luma_prefect._outcomes import AssetName, GenerationOutcome
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.delivery._publish import (
    EVENT_FAILED,
    artifact_key,
    create_batch_table,
    emit_generation_event,
)
from luma_prefect.flows._deliver import (
    deliver,
    failed_outcome,
    holding_claim,
    release_claim,
    take_claim,
    this_holder,
)
from luma_prefect.flows._submit import submit_once
from luma_prefect.ledger._records import Ledger
from luma_prefect.storage import storage_for
from luma_prefect.tasks import wait_for_generation
from luma_prefect.tasks._common import (
    WAIT_BACKSTOP_MARGIN_SECONDS,
    Destination,
    shared_clients,
)
from luma_prefect.tasks._throttle import relay_slots
from luma_prefect.tasks._waiting import follow_generations_task
from luma_prefect.wait._engine import WaitFeed
from luma_prefect.wait._settings import WaitSettings

__all__ = [
    "WaitOptions",
    "collect",
    "generate_many",
    "generate_one",
    "report_batch",
]

FailWhen = Literal["all", "any", "never"]

# Deliveries at once in the sweeps (generate_videos has max_concurrent): without a bound,
# 500 generations settling in one poll round took 482-538 MB of peak RSS (#12).
DELIVERIES_AT_ONCE = 8


class WaitOptions:
    __slots__ = ("max_poll_interval_seconds", "poll_interval_seconds", "timeout_seconds")

    def __init__(self, timeout: float, poll: float, max_poll: float) -> None:
        self.timeout_seconds = timeout
        self.poll_interval_seconds = poll
        self.max_poll_interval_seconds = max(max_poll, poll)
        # Checked now, before anything is submitted: a wait that refuses its options after
        # a paid submit leaves that generation to the sweep.
        WaitSettings(**self.as_kwargs())

    def as_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


async def generate_one(
    block: LumaRelayCredentials,
    request: GenerationRequest,
    destination: Destination,
    options: WaitOptions,
    assets: list[AssetName],
    idempotency_key: str | None,
    position: str | None = None,
    *,
    feed: WaitFeed | None = None,
) -> GenerationOutcome:
    """Submit (once), wait, deliver one generation; generation-level errors become outcomes.

    `position` tells apart the items of one batch (`item-3`) inside the run's identity.
    `feed`: the batch's shared wait to join (else a wait of its own, one task run). In a
    batch the per-generation markdown artifact gives way to the batch's table.
    """
    ledger = Ledger(storage_for(destination))
    if feed is not None and feed.error is not None:
        # The batch can no longer wait: a submit now would pay for a generation left behind.
        return GenerationOutcome(
            generation_id="",
            status="error",
            error=f"Not submitted: the batch's wait had stopped ({feed.error}).",
        )
    try:
        generation_id = await submit_once(
            block, request, ledger, idempotency_key, position, destination
        )
    except LumaError as exc:
        get_run_logger().error("Submitting %r failed: %s", request.prompt or "", exc)
        return GenerationOutcome(
            generation_id=exc.generation_id or "", status="error", error=str(exc)
        ).with_exception(exc)
    except Exception as exc:  # e.g. the ledger's storage failing: this item's outcome only
        # Raised out of a batch, it would end the batch while the other items ran on.
        error = (
            f"Submitting failed ({type(exc).__name__}: {exc}). If the submit had begun, "
            "`luma-prefect resolve` lists it as in doubt: look there before submitting this "
            "request again."
        )
        get_run_logger().error("Submitting %r: %s", request.prompt or "", error)
        return GenerationOutcome(generation_id="", status="error", error=error).with_exception(exc)
    # The claim is held (and renewed) from the wait on: a sweep sees a live holder and
    # leaves the generation alone however long the wait takes.
    lease = await take_claim(ledger, generation_id, this_holder())
    try:
        async with holding_claim(ledger, lease):
            try:
                if feed is None:
                    generation = await _wait_one(block, generation_id, options)
                else:
                    generation = _settled(await feed.add(generation_id, options.timeout_seconds))
            except LumaError as exc:
                return await _ended(ledger, generation_id, exc)
            return await deliver(
                block,
                generation,
                destination,
                ledger,
                assets,
                request,
                lease=lease,
                in_batch=feed is not None,
            )
    except Exception as exc:  # a lost claim, or anything the steps did not expect
        return failed_outcome(generation_id, None, exc)
    finally:
        await release_claim(ledger, lease)


def _settled(result: Generation | LumaError) -> Generation:
    if isinstance(result, LumaError):
        raise result
    return result


async def generate_many(
    block: LumaRelayCredentials,
    requests: Sequence[GenerationRequest],
    destination: Destination,
    options: WaitOptions,
    assets: list[AssetName],
    idempotency_key: str | None,
    max_concurrent: int,
    *,
    on_outcome: Callable[[GenerationOutcome], Awaitable[None]] | None = None,
) -> list[GenerationOutcome]:
    """Submit, wait, deliver many, at most `max_concurrent` in flight (deliveries included).

    Two task runs per generation (`submit <prompt>`, `deliver <id>`) and one wait for the
    whole batch: each generation joins it when its submit returns and leaves it as soon as
    the poll that settled it returns (4 task runs per generation before: 500 made 2,000).
    `on_outcome` is awaited as each generation ends (the flow's batch progress).
    """
    if not requests:
        return []
    # The batch's relay requests share slots of the relay's limit (`relay_slots`), and
    # its tasks one relay client and the media clients (`shared_clients`): a relay client
    # per task run cost ~3 % of the batch's CPU (500 generations, profiled), and its reads
    # a connection each; a media client per delivery, a connection per file.
    async with relay_slots(block.base_url), shared_clients():
        feed = WaitFeed()
        waiter = asyncio.create_task(_follow(block, feed, options, len(requests)))
        gate = asyncio.Semaphore(max_concurrent)

        async def one(position: int, request: GenerationRequest) -> GenerationOutcome:
            async with gate:
                outcome = await generate_one(
                    block,
                    request,
                    destination,
                    options,
                    assets,
                    idempotency_key,
                    position=f"item-{position}",
                    feed=feed,
                )
            if on_outcome is not None:
                await on_outcome(outcome)
            return outcome

        try:
            return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
        except BaseException:
            waiter.cancel()
            raise
        finally:
            feed.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                # Its failure, if any, is already each waiting generation's outcome.
                await waiter


async def _follow(
    block: LumaRelayCredentials,
    feed: WaitFeed,
    options: WaitOptions,
    expected: int,
    batch_size: int = 50,
) -> int:
    try:
        return await follow_generations_task(
            block, feed, expected, batch_size=batch_size, **options.as_kwargs()
        )
    except BaseException as exc:
        # The task can fail before its body runs (Prefect refusing the run, a crash in its
        # set-up): the generations waiting on the feed must hear it, or they wait forever.
        feed.fail(exc)
        raise


async def _wait_one(
    block: LumaRelayCredentials, generation_id: str, options: WaitOptions
) -> Generation:
    # Prefect's timeout as a backstop: the wait's own deadline plus room for the last poll.
    bounded = wait_for_generation.with_options(
        timeout_seconds=options.timeout_seconds + WAIT_BACKSTOP_MARGIN_SECONDS
    )
    return await bounded(block, generation_id, **options.as_kwargs())


async def collect(
    block: LumaRelayCredentials,
    generation_ids: list[str],
    destination: Destination,
    options: WaitOptions,
    assets: list[AssetName],
    batch_size: int,
    *,
    skip_published: bool = False,
    on_outcome: Callable[[GenerationOutcome], Awaitable[None]] | None = None,
) -> list[GenerationOutcome]:
    """One batched wait; each generation delivered as soon as the poll that settled it
    returns, at most DELIVERIES_AT_ONCE at a time (memory does not grow with how many
    settle at once). `on_outcome` is awaited as each generation ends (the batch progress)."""
    ledger = Ledger(storage_for(destination))
    outcomes: dict[str, GenerationOutcome] = {}
    remaining = []
    for generation_id in dict.fromkeys(generation_ids):
        try:
            remaining.append(check_generation_id(generation_id))
        except LumaError as exc:
            get_run_logger().error("Skipping %r: %s", generation_id, exc)
            outcomes[generation_id] = GenerationOutcome(
                generation_id=str(generation_id), status="error", error=str(exc)
            )
    if not remaining:
        return [outcomes[i] for i in dict.fromkeys(generation_ids)]
    # The batch's relay requests share slots of the relay's limit, its tasks their
    # clients (see generate_many).
    async with relay_slots(block.base_url), shared_clients():
        feed = WaitFeed()
        # One deadline for the whole batch: every id joins now.
        settling = {i: feed.add(i, options.timeout_seconds) for i in remaining}
        feed.close()
        waiter = asyncio.create_task(_follow(block, feed, options, len(remaining), batch_size))
        deliveries = asyncio.Semaphore(DELIVERIES_AT_ONCE)

        async def one(generation_id: str) -> GenerationOutcome:
            try:
                generation = _settled(await settling[generation_id])
            except LumaError as exc:
                outcome = await _ended(ledger, generation_id, exc)
            except Exception as exc:  # the wait broke as a whole: a backstop, a bug
                outcome = failed_outcome(generation_id, None, exc)
            else:
                async with deliveries:
                    outcome = await deliver(
                        block,
                        generation,
                        destination,
                        ledger,
                        assets,
                        None,
                        skip_published=skip_published,
                        in_batch=True,
                    )
            if on_outcome is not None:
                await on_outcome(outcome)
            return outcome

        try:
            for done in await asyncio.gather(*(one(i) for i in remaining)):
                outcomes[done.generation_id] = done
        except BaseException:
            waiter.cancel()
            raise
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await waiter
    return [outcomes[i] for i in dict.fromkeys(generation_ids)]


async def _ended(ledger: Ledger, generation_id: str, error: LumaError) -> GenerationOutcome:
    """The outcome of a generation whose wait ended without a generation to deliver."""
    generation = getattr(error, "generation", None)
    if isinstance(error, LumaGenerationFailed):
        emit_generation_event(EVENT_FAILED, error.generation)
        status: Any = "failed"
    elif isinstance(error, LumaWaitTimeout):
        status = "timed_out"
    elif isinstance(error, LumaNotFoundError):
        status = "not_found"
    else:
        status = "error"
    get_run_logger().error("Generation %s: %s", generation_id, error)
    try:
        if isinstance(error, LumaGenerationFailed):
            await asyncio.to_thread(ledger.mark, generation_id, "failed", error=str(error))
    except (LumaError, OSError) as exc:
        get_run_logger().error("Could not mark %s failed in the ledger: %s", generation_id, exc)
    return GenerationOutcome(
        generation_id=generation_id, status=status, generation=generation, error=str(error)
    ).with_exception(error)


_TIMES = ("submitted", "completed", "downloaded", "published", "failed")


def _times(ledger: Ledger | None, generation_id: str) -> dict[str, str]:
    """When the generation reached each step, as the ledger recorded it (UTC, seconds)."""
    record = None
    if ledger is not None and generation_id:
        with contextlib.suppress(LumaError, OSError, ValueError):
            record = ledger.get(generation_id)
    times = record.times() if record is not None else {}
    return {
        name: times[name].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        if name in times
        else ""
        for name in _TIMES
    }


async def report_batch(
    outcomes: Sequence[GenerationOutcome],
    key: str,
    fail_when: FailWhen,
    destination: Destination | None = None,
) -> None:
    """The batch's table artifact (one row per generation: outcome, why not, and when it
    was submitted, completed, downloaded and published, from the ledger), its log line of
    failures, and the run's end as `fail_when` says."""
    ledger = Ledger(storage_for(destination)) if destination is not None else None
    rows = []
    for o in outcomes:
        row: dict[str, Any] = {
            "generation_id": o.generation_id,
            "outcome": o.status,
            "state": o.generation.state.value if o.generation else None,
            "prompt": (o.generation.prompt if o.generation else None) or "",
            "video": o.published.downloaded.assets["video"].path
            if o.published and "video" in o.published.downloaded.assets
            else "",
            "error": o.error or "",
        }
        # In a worker thread: one ledger read per generation (on S3, a request each).
        row.update(await asyncio.to_thread(_times, ledger, o.generation_id))
        rows.append(row)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        # The report lists every failure, one line each, also in the run's logs.
        get_run_logger().warning(
            "%d of %d generation(s) not published:\n%s",
            len(failed),
            len(outcomes),
            "\n".join(f"- {o.generation_id}: {o.status}: {o.error or ''}" for o in failed),
        )
    try:
        await create_batch_table(rows, artifact_key(key))
    except Exception as exc:  # the report must not undo what the sweep delivered
        get_run_logger().error("Could not create the report artifact %s: %s", key, exc)
    if failed and (fail_when == "any" or (fail_when == "all" and len(failed) == len(outcomes))):
        shown = "; ".join(f"{o.generation_id}: {o.status}" for o in failed[:5])
        raise LumaError(f"{len(failed)} of {len(outcomes)} generation(s) failed ({shown}).")
