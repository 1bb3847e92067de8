"""The steps the flows chain: submit once, wait, claim, download, publish, report.

Kept apart from `flows.py` so that module shows only what users run. These steps call the
Prefect tasks and the ledger; every generation-level error becomes a `GenerationOutcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from luma_prefect._exceptions import (
    LumaDownloadError,
    LumaError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaWaitTimeout,
)
from luma_prefect._ids import check_generation_id
from luma_prefect._models import Generation, GenerationRequest
from luma_prefect._outcomes import AssetName, GenerationOutcome
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.delivery._download import discard_holder_parts
from luma_prefect.delivery._publish import (
    EVENT_FAILED,
    MANIFEST_NAME,
    artifact_key,
    create_batch_table,
    emit_generation_event,
    mismatched_files,
)
from luma_prefect.flows._runs import _flow_run_finished, _unwalked
from luma_prefect.flows._submit import _submit_once
from luma_prefect.ledger._claims import Lease
from luma_prefect.ledger._records import Ledger, LedgerRecord
from luma_prefect.storage import Storage, storage_for
from luma_prefect.tasks import _names as names
from luma_prefect.tasks import download_generation as _download_task
from luma_prefect.tasks import wait_for_generation
from luma_prefect.tasks._common import (
    DOWNLOAD_BACKSTOP_SECONDS,
    PUBLISH_BACKSTOP_SECONDS,
    WAIT_BACKSTOP_MARGIN_SECONDS,
    Destination,
)
from luma_prefect.tasks._delivery import announce_published, publish_files
from luma_prefect.tasks._throttle import relay_slots
from luma_prefect.tasks._waiting import follow_generations_task
from luma_prefect.wait._engine import WaitFeed
from luma_prefect.wait._settings import WaitSettings

__all__ = [
    "LEASE",
    "LumaClaimLost",
    "WaitOptions",
    "collect",
    "deliver",
    "generate_many",
    "generate_one",
    "left_behind",
    "report_batch",
]

FailWhen = Literal["all", "any", "never"]

# A claim is a lease renewed while its holder waits and delivers: a holder silent for this
# long (or dead) loses it; a live one keeps it however long the wait or download takes.
LEASE = timedelta(minutes=2)
RENEW_EVERY = LEASE / 4
# The download and publish tasks' bodies: the deliver task runs both, without task runs of
# their own (one task run per delivery instead of two; #12); the published event it sends
# last (`announce_published`).
download_generation = _download_task.fn
# Deliveries at once in the sweeps (generate_videos has max_concurrent): without a bound,
# 500 generations settling in one poll round took 482-538 MB of peak RSS (#12).
DELIVERIES_AT_ONCE = 8
# In a batch, a delivery's progress artifact appears once it has run this long: a quick
# download shows in the batch's progress, a long one in its own as well. (At 5 s, 303 of
# 500 deliveries on a starved machine made one: 1.6 events per generation.)
BATCH_DOWNLOAD_PROGRESS_AFTER_SECONDS = 30.0
# How the lease heartbeat sleeps between renewals; tests replace it.
heartbeat_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class LumaClaimLost(LumaError):
    """Another holder took this generation over (this one was silent past its lease)."""


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
        generation_id = await _submit_once(
            block, request, ledger, idempotency_key, position, destination
        )
    except LumaError as exc:
        get_run_logger().error("Submitting %r failed: %s", request.prompt or "", exc)
        return GenerationOutcome(
            generation_id=exc.generation_id or "", status="error", error=str(exc)
        ).with_exception(exc)
    # The claim is held (and renewed) from the wait on: a sweep sees a live holder and
    # leaves the generation alone however long the wait takes.
    lease = await _take(ledger, generation_id, _owner())
    try:
        async with _holding(ledger, lease):
            try:
                if feed is None:
                    generation = await _wait_one(block, generation_id, options)
                else:
                    generation = _settled(await feed.add(generation_id, options.timeout_seconds))
            except LumaError as exc:
                return _ended(ledger, generation_id, exc)
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
        return _failed(generation_id, None, exc)
    finally:
        await _release(ledger, lease)


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
    # The batch's relay requests share slots of the relay's limit (`relay_slots`).
    async with relay_slots(block.base_url):
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
    # The batch's relay requests share slots of the relay's limit (`relay_slots`).
    async with relay_slots(block.base_url):
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
                outcome = _ended(ledger, generation_id, exc)
            except Exception as exc:  # the wait broke as a whole: a backstop, a bug
                outcome = _failed(generation_id, None, exc)
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


async def deliver(
    block: LumaRelayCredentials,
    generation: Generation,
    destination: Destination,
    ledger: Ledger,
    assets: list[AssetName],
    request: GenerationRequest | None,
    *,
    skip_published: bool = False,
    lease: Lease | None = None,
    in_batch: bool = False,
) -> GenerationOutcome:
    """Claim, download, publish; one publish per generation even with concurrent sweeps.

    The claim is a lease renewed while the delivery works; the part files are named after
    their holder, and the lease is checked before publishing and before marking published,
    so a holder taken over never writes over the new one. Files are checked against what
    the manifest says before the generation is marked published; a mismatch is repaired by
    downloading again. Whatever goes wrong becomes this generation's outcome.

    `skip_published`: sweeps leave alone what another run published meanwhile; an explicit
    collect of a published generation re-verifies its files and publishes it again.
    `lease`: a claim the caller holds (and renews) already.
    `in_batch`: no markdown artifact of its own (the batch's table has its row), and a
    progress artifact only for a download that takes a while.
    The download and the publish are one task run, `deliver <id>`: Failed with the reason
    when the delivery failed.
    """
    logger = get_run_logger()
    own = lease is None
    try:
        if lease is None:
            lease = await _take(ledger, generation.id, _owner())
        if lease is None:
            holder = ledger.claim_owner(generation.id)
            message = (
                f"Generation {generation.id} is being published by flow run {holder} right "
                f"now; its files and manifest.json will be in {generation.id}/ of the "
                "destination. Nothing to do here."
            )
            logger.warning(message)
            return GenerationOutcome(
                generation_id=generation.id, status="error", generation=generation, error=message
            )
        async with _holding(ledger, lease) if own else contextlib.nullcontext():
            # Quoted: Prefect walks every parameter of a task run twice, looking for
            # futures (the generation's raw answer, the block, the ledger: 5.4 s of a
            # 500-generation profile); none of these can hold one.
            return await deliver_generation(
                _unwalked(block),
                _unwalked(generation),
                destination,
                _unwalked(ledger),
                assets,
                _unwalked(request),
                skip_published,
                _unwalked(lease),
                in_batch,
            )
    except Exception as exc:
        # Anything (a redirect loop, a bad gzip body, JSON nested too deep...) is this
        # generation's outcome, never the end of the other generations of the run.
        return _failed(generation.id, generation, exc)
    finally:
        if own:
            await _release(ledger, lease)


@task(
    name="deliver-generation",
    task_run_name=names.deliver_name,
    tags=[names.RUN_TAG],
    cache_policy=NO_CACHE,
    timeout_seconds=DOWNLOAD_BACKSTOP_SECONDS + PUBLISH_BACKSTOP_SECONDS,
)
async def deliver_generation(
    block: LumaRelayCredentials,
    generation: Generation,
    destination: Destination,
    ledger: Ledger,
    assets: list[AssetName],
    request: GenerationRequest | None,
    skip_published: bool,
    lease: Lease,
    in_batch: bool = False,
) -> GenerationOutcome:
    """Download a completed generation's files and publish them, in one task run.

    The `download_generation` and `publish_generation` tasks' bodies, run here without task
    runs of their own: one task run per delivery (#12), Failed with the reason if it fails.
    """
    logger = get_run_logger()
    record = ledger.get(generation.id)
    if skip_published and record is not None and record.status == "published":
        logger.info("Generation %s was already published; skipping it.", generation.id)
        return GenerationOutcome(
            generation_id=generation.id, status="published", generation=generation
        )
    # No event of its own for "completed": the `published` (or `failed`) event that follows
    # carries the time, and a third event per generation nobody acts on cost 1 of 8 (#12).
    record = ledger.mark(generation.id, "completed") or record
    storage = storage_for(destination)
    tag = hashlib.sha256(lease.owner.encode()).hexdigest()[:12]
    # Parts of earlier holders (killed mid-download) are never resumed by anyone else.
    await _discard_parts(storage, generation.id, keep=tag)
    for _attempt in range(2):
        downloaded = await download_generation(
            block,
            generation,
            destination,
            assets=assets,
            part_tag=tag,
            progress_after_seconds=BATCH_DOWNLOAD_PROGRESS_AFTER_SECONDS if in_batch else 0.0,
        )
        ledger.mark(generation.id, "downloaded")
        await _check_held(ledger, lease)
        published, states = await publish_files(
            downloaded,
            destination=destination,
            request=request or _recorded_request(record),
            timeline=record.times() if record else None,
            create_artifacts=not in_batch,
        )
        bad = await asyncio.to_thread(mismatched_files, storage, downloaded)
        if not bad:
            break
        # A file changed after its download (a late write of another holder, a disk
        # fault): never mark published what the manifest does not describe.
        logger.warning(
            "The %s of generation %s no longer match the manifest; downloading again.",
            ", ".join(bad),
            generation.id,
        )
        for name in bad:
            await asyncio.to_thread(
                storage.delete, f"{generation.id}/{downloaded.assets[name].file_name}"
            )
    else:
        # No manifest may describe files it does not match.
        await asyncio.to_thread(storage.delete, f"{generation.id}/{MANIFEST_NAME}")
        raise LumaDownloadError(
            f"The {', '.join(bad)} of generation {generation.id} kept differing from its "
            "manifest (size or sha256) after a fresh download. Check the destination's "
            "disk and that no other program writes there, then collect it again.",
            generation_id=generation.id,
            retryable=True,
        )
    await _check_held(ledger, lease)
    ledger.mark(generation.id, "published")
    # Only now: an automation acting on it finds the files its manifest describes.
    published = announce_published(published, states)
    # Ours are all committed; any other is a late write of a holder taken over meanwhile.
    await _discard_parts(storage, generation.id, keep=None)
    return GenerationOutcome(
        generation_id=generation.id,
        status="published",
        published=published,
        generation=generation,
    )


async def _discard_parts(storage: Storage, generation_id: str, *, keep: str | None) -> None:
    try:
        removed = await asyncio.to_thread(discard_holder_parts, storage, generation_id, keep=keep)
    except (OSError, LumaError) as exc:  # tidying up never fails a delivery
        get_run_logger().warning("Could not remove old part files of %s: %s", generation_id, exc)
        return
    if removed:
        get_run_logger().info(
            "Removed %d part file(s) of %s left by an earlier holder.", len(removed), generation_id
        )


def _owner() -> str:
    return str(current_flow_run.id or f"{socket.gethostname()}-{os.getpid()}")


async def _take(ledger: Ledger, generation_id: str, owner: str) -> Lease | None:
    try:
        return await _claim(ledger, generation_id, owner)
    except (OSError, LumaError) as exc:
        get_run_logger().error("Could not claim generation %s: %s", generation_id, exc)
        return None


async def _release(ledger: Ledger, lease: Lease | None) -> None:
    if lease is None:
        return
    try:
        await asyncio.to_thread(ledger.release, lease.generation_id, lease)
    except (OSError, LumaError) as exc:
        # The lease then runs out by itself.
        get_run_logger().warning("Could not release generation %s: %s", lease.generation_id, exc)


async def _check_held(ledger: Ledger, lease: Lease) -> None:
    if not await asyncio.to_thread(ledger.holds, lease):
        raise LumaClaimLost(_lost_message(lease), generation_id=lease.generation_id)


def _lost_message(lease: Lease) -> str:
    return (
        f"Generation {lease.generation_id} was taken over by another run while this one "
        f"was silent for longer than its {LEASE.total_seconds():.0f} s lease; that run "
        "finishes it. Nothing to do here."
    )


@contextlib.asynccontextmanager
async def _holding(ledger: Ledger, lease: Lease | None) -> AsyncIterator[None]:
    """Renew `lease` every RENEW_EVERY while the body runs; when it is lost (taken over,
    released), the body is cancelled at once and LumaClaimLost raised instead."""
    if lease is None:
        yield
        return
    body = asyncio.current_task()
    lost = False

    async def beat() -> None:
        nonlocal lost
        while True:
            await heartbeat_sleep(RENEW_EVERY.total_seconds())
            try:
                renewed = await asyncio.to_thread(ledger.renew, lease)
            except (OSError, LumaError) as exc:
                # Not known lost: the fence before publishing decides.
                get_run_logger().warning("Could not renew the claim: %s", exc)
                continue
            if not renewed:
                lost = True
                if body is not None:
                    body.cancel()
                return

    beater = asyncio.create_task(beat())
    try:
        yield
    except asyncio.CancelledError:
        if not lost or body is None:
            raise
        body.uncancel()
        raise LumaClaimLost(_lost_message(lease), generation_id=lease.generation_id) from None
    finally:
        beater.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beater


async def _claim(ledger: Ledger, generation_id: str, owner: str) -> Lease | None:
    lease = await asyncio.to_thread(ledger.claim, generation_id, owner, stale_after=LEASE)
    if lease is not None:
        return lease
    holder = ledger.claim_owner(generation_id)
    if holder and holder != owner and await _flow_run_finished(holder):
        # Its holder's flow run ended (crashed, cancelled...) without releasing it.
        return ledger.claim(generation_id, owner, stale_after=LEASE, force=True)
    return None


def _failed(generation_id: str, generation: Generation | None, exc: Exception) -> GenerationOutcome:
    """The outcome of a generation whose step raised: a one-line message, logged once."""
    if isinstance(exc, LumaError):
        message = str(exc)
    else:
        shown = str(exc).splitlines()[0][:300] if str(exc) else ""
        message = (
            f"Generation {generation_id} was not published: {type(exc).__name__}"
            + (f": {shown}" if shown else "")
            + ". Its record stays in the ledger: collect_pending tries it again."
        )
    get_run_logger().error("Generation %s was not published: %s", generation_id, message)
    outcome = GenerationOutcome(
        generation_id=generation_id, status="error", generation=generation, error=message
    )
    return outcome.with_exception(exc) if isinstance(exc, LumaError) else outcome


def _ended(ledger: Ledger, generation_id: str, error: LumaError) -> GenerationOutcome:
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
            ledger.mark(generation_id, "failed", error=str(error))
    except (LumaError, OSError) as exc:
        get_run_logger().error("Could not mark %s failed in the ledger: %s", generation_id, exc)
    return GenerationOutcome(
        generation_id=generation_id, status=status, generation=generation, error=str(error)
    ).with_exception(error)


def _recorded_request(record: LedgerRecord | None) -> GenerationRequest | None:
    if record is None or not record.request:
        return None
    try:
        return GenerationRequest.model_validate(record.request)
    except ValueError:
        return None


async def left_behind(ledger: Ledger, record: LedgerRecord) -> bool:
    """Whether a sweep should finish this record: judged by liveness, never by age.

    A run still at work (waiting, downloading) holds the generation's claim and renews it:
    taking it from under it would fail a healthy run or publish twice, however long its
    wait. Left behind means: nobody holds a live claim, and the submitting flow run is over
    or its claim's process (or the one that recorded it) is dead, or it has held no claim
    for a whole lease (a worker killed without anyone marking its flow run Crashed).
    """
    try:
        if ledger.claim_live(record.generation_id):
            return False
    except (OSError, LumaError) as exc:
        # Unknown: leave it to the next sweep rather than risk two holders.
        get_run_logger().warning(
            "Could not read the claim of generation %s: %s", record.generation_id, exc
        )
        return False
    if not record.flow_run_id or await _flow_run_finished(record.flow_run_id):
        return True
    if ledger.claim_abandoned(record.generation_id) or record.holder_gone():
        return True
    # Its run looks alive but holds no live claim: give it one lease to take it (the
    # moment between recording the submit and claiming), then it is left behind.
    updated = ledger.updated_at(record)
    return updated is None or datetime.now(timezone.utc) - updated > LEASE


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
        row.update(_times(ledger, o.generation_id))
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
