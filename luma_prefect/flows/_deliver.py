"""Delivery under a claim: one holder downloads and publishes a generation, once.

The claim is a lease renewed while its holder works; a holder silent past it is taken
over and stops before it publishes. The download and the publish run as one task run
(`deliver_generation`). `left_behind` judges, by liveness, which records a sweep may finish.
Ledger calls run in a worker thread, as in `_submit`: never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from luma_prefect._exceptions import LumaDownloadError, LumaError
from luma_prefect._models import Generation, GenerationRequest
from luma_prefect._outcomes import AssetName, GenerationOutcome
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.delivery._download import discard_holder_parts
from luma_prefect.delivery._publish import MANIFEST_NAME, mismatched_files
from luma_prefect.flows._runs import flow_run_finished, unwalked
from luma_prefect.ledger._claims import Lease
from luma_prefect.ledger._records import Ledger, LedgerRecord
from luma_prefect.storage import Storage, storage_for
from luma_prefect.tasks import _names as names
from luma_prefect.tasks._common import (
    DOWNLOAD_BACKSTOP_SECONDS,
    PUBLISH_BACKSTOP_SECONDS,
    Destination,
)
from luma_prefect.tasks._delivery import announce_published, fetch_files, publish_files

__all__ = [
    "LEASE",
    "LumaClaimLost",
    "deliver",
    "deliver_generation",
    "failed_outcome",
    "holding_claim",
    "left_behind",
    "release_claim",
    "take_claim",
    "this_holder",
]

# A claim is a lease renewed while its holder waits and delivers: a holder silent for this
# long (or dead) loses it; a live one keeps it however long the wait or download takes.
LEASE = timedelta(minutes=2)
RENEW_EVERY = LEASE / 4
# The download and publish tasks' bodies (`fetch_files`, `publish_files`): the deliver task
# runs both, without task runs of their own (one task run per delivery instead of two;
# #12), and says both in one INFO line with the published event, last (`announce_published`).
# In a batch, a delivery's progress artifact appears once it has run this long: a quick
# download shows in the batch's progress, a long one in its own as well. (At 5 s, 303 of
# 500 deliveries on a starved machine made one: 1.6 events per generation.)
BATCH_DOWNLOAD_PROGRESS_AFTER_SECONDS = 30.0
# How the lease heartbeat sleeps between renewals; tests replace it.
heartbeat_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class LumaClaimLost(LumaError):
    """Another holder took this generation over (this one was silent past its lease)."""


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
            lease = await take_claim(ledger, generation.id, this_holder())
        if lease is None:
            holder = await asyncio.to_thread(ledger.claim_owner, generation.id)
            message = (
                f"Generation {generation.id} is being published by flow run {holder} right "
                f"now; its files and manifest.json will be in {generation.id}/ of the "
                "destination. Nothing to do here."
            )
            logger.warning(message)
            return GenerationOutcome(
                generation_id=generation.id, status="error", generation=generation, error=message
            )
        async with holding_claim(ledger, lease) if own else contextlib.nullcontext():
            # Quoted: Prefect walks every parameter of a task run twice, looking for
            # futures (the generation's raw answer, the block, the ledger: 5.4 s of a
            # 500-generation profile); none of these can hold one.
            return await deliver_generation(
                unwalked(block),
                unwalked(generation),
                destination,
                unwalked(ledger),
                assets,
                unwalked(request),
                skip_published,
                unwalked(lease),
                in_batch,
            )
    except Exception as exc:
        # Anything (a redirect loop, a bad gzip body, JSON nested too deep...) is this
        # generation's outcome, never the end of the other generations of the run.
        return failed_outcome(generation.id, generation, exc)
    finally:
        if own:
            await release_claim(ledger, lease)


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
    record = await asyncio.to_thread(ledger.get, generation.id)
    if skip_published and record is not None and record.status == "published":
        logger.info("Generation %s was already published; skipping it.", generation.id)
        return GenerationOutcome(
            generation_id=generation.id, status="published", generation=generation
        )
    # No event of its own for "completed": the `published` (or `failed`) event that follows
    # carries the time, and a third event per generation nobody acts on cost 1 of 8 (#12).
    record = await asyncio.to_thread(ledger.mark, generation.id, "completed") or record
    storage = storage_for(destination)
    tag = hashlib.sha256(lease.owner.encode()).hexdigest()[:12]
    # Parts of earlier holders (killed mid-download) are never resumed by anyone else.
    await _discard_parts(storage, generation.id, keep=tag)
    for _attempt in range(2):
        downloaded = await fetch_files(
            block,
            generation,
            destination,
            assets=assets,
            part_tag=tag,
            progress_after_seconds=BATCH_DOWNLOAD_PROGRESS_AFTER_SECONDS if in_batch else 0.0,
        )
        await asyncio.to_thread(ledger.mark, generation.id, "downloaded")
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
    await asyncio.to_thread(ledger.mark, generation.id, "published")
    # Only now: an automation acting on it finds the files its manifest describes.
    published = announce_published(published, states, downloaded_too=True)
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


def this_holder() -> str:
    """Who holds claims for this run: its flow run, else this host and process."""
    return str(current_flow_run.id or f"{socket.gethostname()}-{os.getpid()}")


async def take_claim(ledger: Ledger, generation_id: str, owner: str) -> Lease | None:
    try:
        return await _claim(ledger, generation_id, owner)
    except (OSError, LumaError) as exc:
        get_run_logger().error("Could not claim generation %s: %s", generation_id, exc)
        return None


async def release_claim(ledger: Ledger, lease: Lease | None) -> None:
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
async def holding_claim(ledger: Ledger, lease: Lease | None) -> AsyncIterator[None]:
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
    holder = await asyncio.to_thread(ledger.claim_owner, generation_id)
    if holder and holder != owner and await flow_run_finished(holder):
        # Its holder's flow run ended (crashed, cancelled...) without releasing it.
        return await asyncio.to_thread(
            ledger.claim, generation_id, owner, stale_after=LEASE, force=True
        )
    return None


def failed_outcome(
    generation_id: str, generation: Generation | None, exc: Exception
) -> GenerationOutcome:
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
        if await asyncio.to_thread(ledger.claim_live, record.generation_id):
            return False
    except (OSError, LumaError) as exc:
        # Unknown: leave it to the next sweep rather than risk two holders.
        get_run_logger().warning(
            "Could not read the claim of generation %s: %s", record.generation_id, exc
        )
        return False
    if not record.flow_run_id or await flow_run_finished(record.flow_run_id):
        return True
    if await asyncio.to_thread(ledger.claim_abandoned, record.generation_id):
        return True
    if record.holder_gone():
        return True
    # Its run looks alive but holds no live claim: give it one lease to take it (the
    # moment between recording the submit and claiming), then it is left behind.
    updated = ledger.updated_at(record)
    return updated is None or datetime.now(timezone.utc) - updated > LEASE
