"""The steps the flows chain: submit once, wait, claim, download, publish, report.

Kept apart from `flows.py` so that module shows only what users run. These steps call the
Prefect tasks and the ledger; every generation-level error becomes a `GenerationOutcome`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.runtime import flow_run as current_flow_run

from luma_prefect._exceptions import (
    LumaError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaSubmitUncertainError,
    LumaWaitTimeout,
)
from luma_prefect._models import Generation, GenerationRequest, check_generation_id
from luma_prefect._outcomes import AssetName, GenerationOutcome
from luma_prefect._urls import public_url
from luma_prefect.credentials import LumaRelayCredentials, saved_block_name
from luma_prefect.delivery._publish import (
    EVENT_COMPLETED,
    EVENT_FAILED,
    artifact_key,
    create_batch_table,
    emit_generation_event,
)
from luma_prefect.ledger._records import Ledger, LedgerRecord
from luma_prefect.storage import storage_for
from luma_prefect.tasks import (
    download_generation,
    publish_generation,
    submit_generation,
    wait_for_generation,
    wait_for_generations,
)

__all__ = [
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

_CLAIM_TTL = timedelta(minutes=15)
# Longer than any wait's default timeout (30 min): a record this still belongs to nobody.
_STUCK_AFTER = timedelta(hours=1)
_FINAL_RUN_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


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
    try:
        generation = await wait_for_generation(block, generation_id, **options.as_kwargs())
    except LumaError as exc:
        return _ended(ledger, generation_id, exc)
    return await deliver(block, generation, destination, ledger, assets, request)


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
            credentials_block=saved_block_name(block),  # a name, never the key
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
        results = await wait_for_generations(
            block,
            remaining,
            timeout_seconds=left,
            poll_interval_seconds=options.poll_interval_seconds,
            max_poll_interval_seconds=options.max_poll_interval_seconds,
            batch_size=batch_size,
            return_exceptions=True,
            return_when="first",
        )
        settled = [(i, r) for i, r in zip(remaining, results, strict=True) if r is not None]
        ready = [r for _, r in settled if isinstance(r, Generation)]
        for generation_id, result in settled:
            if isinstance(result, LumaError):
                outcomes[generation_id] = _ended(ledger, generation_id, result)
        delivered = await asyncio.gather(
            *(
                deliver(block, g, destination, ledger, assets, None, skip_published=skip_published)
                for g in ready
            )
        )
        outcomes.update((o.generation_id, o) for o in delivered)
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
) -> GenerationOutcome:
    """Claim, download, publish; one publish per generation even with concurrent sweeps.

    `skip_published`: sweeps leave alone what another run published meanwhile; an explicit
    collect of a published generation re-verifies its files and publishes it again.
    """
    logger = get_run_logger()
    owner = str(current_flow_run.id or f"{socket.gethostname()}-{os.getpid()}")
    claimed = False
    try:
        claimed = await _claim(ledger, generation.id, owner)
        if not claimed:
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
        record = ledger.get(generation.id)
        if skip_published and record is not None and record.status == "published":
            logger.info("Generation %s was already published; skipping it.", generation.id)
            return GenerationOutcome(
                generation_id=generation.id, status="published", generation=generation
            )
        ledger.mark(generation.id, "completed")
        emit_generation_event(EVENT_COMPLETED, generation)
        downloaded = await download_generation(block, generation, destination, assets=assets)
        ledger.mark(generation.id, "downloaded")
        published = await publish_generation(
            downloaded,
            destination=destination,
            request=request or _recorded_request(record),
            timeline=record.times() if record else None,
        )
        ledger.mark(generation.id, "published")
        return GenerationOutcome(
            generation_id=generation.id,
            status="published",
            published=published,
            generation=generation,
        )
    except (LumaError, OSError) as exc:
        logger.error("Generation %s was not published: %s", generation.id, exc)
        return GenerationOutcome(
            generation_id=generation.id, status="error", generation=generation, error=str(exc)
        ).with_exception(exc)
    finally:
        if claimed:
            ledger.release(generation.id, owner)


async def _claim(ledger: Ledger, generation_id: str, owner: str) -> bool:
    if ledger.claim(generation_id, owner, stale_after=_CLAIM_TTL):
        return True
    holder = ledger.claim_owner(generation_id)
    if holder and await _flow_run_finished(holder):
        # Its holder's flow run ended (crashed, cancelled...) without releasing it.
        return ledger.claim(generation_id, owner, stale_after=timedelta(0))
    return False


async def _flow_run_finished(flow_run_id: str) -> bool:
    try:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
    except Exception:
        return False
    return bool(run.state and run.state.type.value in _FINAL_RUN_STATES)


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
    """Whether a sweep should finish this record: its flow run is over, or it is stuck.

    A run still at work (waiting, downloading) finishes its own generation; taking it from
    under it would fail a healthy run. Stuck means: its claim is held by a dead process, or
    it has not moved for longer than any wait (a worker killed without anyone marking its
    flow run Crashed).
    """
    if not record.flow_run_id or await _flow_run_finished(record.flow_run_id):
        return True
    if ledger.claim_abandoned(record.generation_id):
        return True
    updated = ledger.updated_at(record)
    return updated is None or datetime.now(timezone.utc) - updated > _STUCK_AFTER


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
    await create_batch_table(rows, artifact_key(key))
    failed = [o for o in outcomes if not o.ok]
    if failed and (fail_when == "any" or (fail_when == "all" and len(failed) == len(outcomes))):
        shown = "; ".join(f"{o.generation_id}: {o.status}" for o in failed[:5])
        raise LumaError(f"{len(failed)} of {len(outcomes)} generation(s) failed ({shown}).")
