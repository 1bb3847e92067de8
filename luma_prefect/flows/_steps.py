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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.runtime import flow_run as current_flow_run

from luma_prefect._exceptions import (
    LumaDownloadError,
    LumaError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaSubmitUncertainError,
    LumaWaitTimeout,
)
from luma_prefect._models import Generation, GenerationRequest, check_generation_id
from luma_prefect._outcomes import AssetName, GenerationOutcome
from luma_prefect._urls import public_url
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.delivery._publish import (
    EVENT_COMPLETED,
    EVENT_FAILED,
    MANIFEST_NAME,
    artifact_key,
    create_batch_table,
    emit_generation_event,
    mismatched_files,
)
from luma_prefect.ledger._claims import Lease
from luma_prefect.ledger._records import Ledger, LedgerRecord
from luma_prefect.storage import storage_for
from luma_prefect.tasks import (
    download_generation,
    publish_generation,
    submit_generation,
    wait_for_generation,
    wait_for_generations,
)
from luma_prefect.tasks._common import WAIT_BACKSTOP_MARGIN_SECONDS

__all__ = [
    "LEASE",
    "LumaClaimLost",
    "WaitOptions",
    "collect",
    "deliver",
    "generate_one",
    "left_behind",
    "report_batch",
    "same_relay",
]

Destination = str | LocalFileSystem | RemoteFileSystem
FailWhen = Literal["all", "any", "never"]

# A claim is a lease renewed while its holder waits and delivers: a holder silent for this
# long (or dead) loses it; a live one keeps it however long the wait or download takes.
LEASE = timedelta(minutes=2)
RENEW_EVERY = LEASE / 4
_FINAL_RUN_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
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

    def as_kwargs(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}


async def generate_one(
    block: LumaRelayCredentials,
    request: GenerationRequest,
    destination: Destination,
    options: WaitOptions,
    assets: list[AssetName],
    idempotency_key: str | None,
) -> GenerationOutcome:
    """Submit (once), wait, deliver one generation; generation-level errors become outcomes."""
    ledger = Ledger(storage_for(destination))
    try:
        generation_id = await _submit_once(block, request, ledger, idempotency_key)
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
                generation = await _wait_one(block, generation_id, options)
            except LumaError as exc:
                return _ended(ledger, generation_id, exc)
            return await deliver(
                block, generation, destination, ledger, assets, request, lease=lease
            )
    except Exception as exc:  # a lost claim, or anything the steps did not expect
        return _failed(generation_id, None, exc)
    finally:
        await _release(ledger, lease)


async def _wait_one(
    block: LumaRelayCredentials, generation_id: str, options: WaitOptions
) -> Generation:
    # Prefect's timeout as a backstop: the wait's own deadline plus room for the last poll.
    bounded = wait_for_generation.with_options(
        timeout_seconds=options.timeout_seconds + WAIT_BACKSTOP_MARGIN_SECONDS
    )
    return await bounded(block, generation_id, **options.as_kwargs())


async def _submit_once(
    block: LumaRelayCredentials,
    request: GenerationRequest,
    ledger: Ledger,
    idempotency_key: str | None,
) -> str:
    logger = get_run_logger()
    flow_run_id = current_flow_run.id
    key = Ledger.submit_key(
        str(flow_run_id or f"no-flow-run-{time.time_ns()}"),
        f"{block.base_url}|{block.api_style}|{block.route_prefix}",
        request,
        idempotency_key,
    )
    if flow_run_id:
        recorded = ledger.find_submission(key)
        if recorded:
            logger.info("Reusing generation %s submitted earlier in this flow run.", recorded)
            return recorded
        if ledger.submission_in_doubt(key):
            raise LumaSubmitUncertainError(
                "An earlier attempt of this flow run to submit this request broke off after "
                "it may have reached the relay, so it is not submitted again (that could pay "
                f"twice). Look at the relay's task list at {public_url(block.base_url)}; to "
                "submit anew on purpose, pass a new idempotency_key."
            )
        ledger.begin_submission(key, str(flow_run_id))
    try:
        generation = await submit_generation(block, request, idempotency_key)
    except LumaSubmitUncertainError:
        raise  # the intent stays recorded: a retried run will not pay twice
    except LumaError:
        ledger.abandon_submission(key)  # refused or never sent: nothing was created
        raise
    try:
        ledger.record_submitted(
            generation,
            key=key,
            request=request,
            flow_run_id=str(flow_run_id) if flow_run_id else None,
            relay_base_url=public_url(block.base_url),  # never user:password
            relay_style=block.api_style,
        )
    except (OSError, LumaError) as exc:
        # The generation is paid for: never fail it because the ledger could not be written.
        logger.error(
            "Could not record generation %s in the ledger (%s); it goes on, but a crash now "
            "would leave it to be collected by id.",
            generation.id,
            exc,
        )
    return generation.id


async def collect(
    block: LumaRelayCredentials,
    generation_ids: list[str],
    destination: Destination,
    options: WaitOptions,
    assets: list[AssetName],
    batch_size: int,
    *,
    skip_published: bool = False,
) -> list[GenerationOutcome]:
    """Batched wait; each generation is delivered as soon as a wait round returns it."""
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
    deadline = time.monotonic() + options.timeout_seconds
    while remaining:
        left = max(deadline - time.monotonic(), 0.001)
        try:
            results = await wait_for_generations.with_options(
                timeout_seconds=left + WAIT_BACKSTOP_MARGIN_SECONDS
            )(
                block,
                remaining,
                timeout_seconds=left,
                poll_interval_seconds=options.poll_interval_seconds,
                max_poll_interval_seconds=options.max_poll_interval_seconds,
                batch_size=batch_size,
                return_exceptions=True,
                return_when="first",
            )
        except Exception as exc:
            # A wait that broke as a whole (a refused key, a backstop timeout): each id
            # still pending gets that as its outcome; those delivered keep theirs.
            for generation_id in remaining:
                outcomes[generation_id] = _failed(generation_id, None, exc)
            break
        settled = [(i, r) for i, r in zip(remaining, results, strict=True) if r is not None]
        ready = [r for _, r in settled if isinstance(r, Generation)]
        for generation_id, result in settled:
            if isinstance(result, LumaError):
                outcomes[generation_id] = _ended(ledger, generation_id, result)
        delivered = await asyncio.gather(
            *(
                deliver(block, g, destination, ledger, assets, None, skip_published=skip_published)
                for g in ready
            ),
            return_exceptions=True,
        )
        for generation, done in zip(ready, delivered, strict=True):
            if isinstance(done, BaseException):
                if not isinstance(done, Exception):
                    raise done  # cancellation, KeyboardInterrupt: not a generation's outcome
                done = _failed(generation.id, generation, done)
            outcomes[done.generation_id] = done
        remaining = [i for i, r in zip(remaining, results, strict=True) if r is None]
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
            return await _deliver_held(
                block, generation, destination, ledger, assets, request, skip_published, lease
            )
    except Exception as exc:
        # Anything (a redirect loop, a bad gzip body, JSON nested too deep...) is this
        # generation's outcome, never the end of the other generations of the run.
        return _failed(generation.id, generation, exc)
    finally:
        if own:
            await _release(ledger, lease)


async def _deliver_held(
    block: LumaRelayCredentials,
    generation: Generation,
    destination: Destination,
    ledger: Ledger,
    assets: list[AssetName],
    request: GenerationRequest | None,
    skip_published: bool,
    lease: Lease,
) -> GenerationOutcome:
    logger = get_run_logger()
    record = ledger.get(generation.id)
    if skip_published and record is not None and record.status == "published":
        logger.info("Generation %s was already published; skipping it.", generation.id)
        return GenerationOutcome(
            generation_id=generation.id, status="published", generation=generation
        )
    ledger.mark(generation.id, "completed")
    emit_generation_event(EVENT_COMPLETED, generation)
    storage = storage_for(destination)
    tag = hashlib.sha256(lease.owner.encode()).hexdigest()[:12]
    for _attempt in range(2):
        downloaded = await download_generation(
            block, generation, destination, assets=assets, part_tag=tag
        )
        ledger.mark(generation.id, "downloaded")
        await _check_held(ledger, lease)
        published = await publish_generation(
            downloaded,
            destination=destination,
            request=request or _recorded_request(record),
            timeline=record.times() if record else None,
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
    return GenerationOutcome(
        generation_id=generation.id,
        status="published",
        published=published,
        generation=generation,
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


async def _flow_run_finished(flow_run_id: str) -> bool:
    try:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
    except Exception:
        return False
    return bool(run.state and run.state.type.value in _FINAL_RUN_STATES)


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
    or its claim's process is dead, or it has held no claim for a whole lease (a worker
    killed without anyone marking its flow run Crashed).
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
    if ledger.claim_abandoned(record.generation_id):
        return True
    # Its run looks alive but holds no live claim: give it one lease to take it (the
    # moment between recording the submit and claiming), then it is left behind.
    updated = ledger.updated_at(record)
    return updated is None or datetime.now(timezone.utc) - updated > LEASE


def same_relay(record: LedgerRecord, block: LumaRelayCredentials) -> bool:
    return record.relay_base_url in (None, public_url(block.base_url))


async def report_batch(
    outcomes: Sequence[GenerationOutcome], key: str, fail_when: FailWhen
) -> None:
    rows = [
        {
            "generation_id": o.generation_id,
            "outcome": o.status,
            "state": o.generation.state.value if o.generation else None,
            "prompt": (o.generation.prompt if o.generation else None) or "",
            "video": o.published.downloaded.assets["video"].path
            if o.published and "video" in o.published.downloaded.assets
            else "",
            "error": o.error or "",
        }
        for o in outcomes
    ]
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
