"""Flows that chain it all: submit (or take ids), wait, download, publish.

Each flow works from the Prefect UI (typed, described parameters) and as a subflow of a
larger media pipeline. Every paid generation goes into the ledger in the destination right
after the relay accepts it, so `collect_pending` can finish whatever a dead worker left.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from prefect import flow, get_run_logger
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
from luma_prefect._ledger import Ledger, LedgerRecord
from luma_prefect._models import AspectRatio, Generation, GenerationRequest
from luma_prefect._publish import (
    EVENT_COMPLETED,
    EVENT_FAILED,
    artifact_key,
    create_batch_table,
    emit_generation_event,
)
from luma_prefect._results import AssetName, GenerationOutcome, PublishedGeneration
from luma_prefect._routes import check_generation_id, public_url
from luma_prefect._storage import storage_for
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.tasks import (
    download_generation,
    publish_generation,
    resolve_credentials,
    submit_generation,
    wait_for_generation,
    wait_for_generations,
)

__all__ = ["collect_generations", "collect_pending", "generate_video", "generate_videos"]

Destination = str | LocalFileSystem | RemoteFileSystem
CredentialsInput = LumaRelayCredentials | str
FailWhen = Literal["all", "any", "never"]

DEFAULT_CREDENTIALS = "luma-relay"
DEFAULT_DESTINATION = "luma-output"
DEFAULT_ASSETS: tuple[AssetName, ...] = ("video", "thumbnail", "last_frame")
_CLAIM_TTL = timedelta(minutes=15)
# Longer than any wait's default timeout (30 min): a record this still belongs to nobody.
_STUCK_AFTER = timedelta(hours=1)
_FINAL_RUN_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@flow(name="generate-video", log_prints=False)
async def generate_video(
    prompt: str | None = None,
    aspect_ratio: AspectRatio = "16:9",
    image_url: str | None = None,
    image_end_url: str | None = None,
    loop: bool = False,
    model: str | None = None,
    resolution: str | None = None,
    duration: str | None = None,
    credentials: CredentialsInput = DEFAULT_CREDENTIALS,
    destination: Destination = DEFAULT_DESTINATION,
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    assets: list[AssetName] = list(DEFAULT_ASSETS),  # noqa: B006 (Prefect needs a value)
    idempotency_key: str | None = None,
) -> PublishedGeneration:
    """Generate one video: submit, wait, download the files, publish the results.

    Args:
        prompt: What the video shows. Required unless a start image is given.
        aspect_ratio: Frame shape: 16:9, 9:16, 1:1, 4:3, 3:4, 21:9 or 9:21.
        image_url: Optional start frame: an http(s) URL or a data:image base64 URI.
        image_end_url: Optional end frame: an http(s) URL or a data:image base64 URI.
        loop: Make the video loop seamlessly.
        model: Optional model name (e.g. ray-v2 on relays, ray-2 on the official API).
        resolution: Optional resolution, e.g. 720p or 1080p.
        duration: Optional duration, e.g. 5s.
        credentials: A LumaRelayCredentials block, or the name of a saved one.
        destination: Local folder, fsspec URL, or a LocalFileSystem/RemoteFileSystem block.
        timeout_seconds: Longest wait for the generation, in seconds.
        poll_interval_seconds: First interval between polls; it grows up to the maximum.
        max_poll_interval_seconds: Longest interval between polls.
        assets: Files to download: video, thumbnail, last_frame.
        idempotency_key: Set a new value to submit an equal request again in one flow run.

    Example:
        ```python
        import asyncio

        from luma_prefect.flows import generate_video

        published = asyncio.run(generate_video(prompt="a fox", credentials="luma-relay"))
        print(published.manifest_path)
        ```
    """
    request = GenerationRequest(
        prompt=prompt,
        aspect_ratio=aspect_ratio,
        image_url=image_url,
        image_end_url=image_end_url,
        loop=loop or None,
        model=model,
        resolution=resolution,
        duration=duration,
    )
    outcome = await _generate_one(
        await resolve_credentials(credentials),
        request,
        destination,
        _WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds),
        list(assets),
        idempotency_key,
    )
    if outcome.published is None:
        raise outcome.exception or LumaError(
            outcome.error or f"Generation {outcome.generation_id} was not published.",
            generation_id=outcome.generation_id,
        )
    return outcome.published


@flow(name="generate-videos", log_prints=False)
async def generate_videos(
    requests: list[GenerationRequest],
    max_concurrent: int = 4,
    credentials: CredentialsInput = DEFAULT_CREDENTIALS,
    destination: Destination = DEFAULT_DESTINATION,
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    assets: list[AssetName] = list(DEFAULT_ASSETS),  # noqa: B006
    fail_when: FailWhen = "all",
) -> list[GenerationOutcome]:
    """Generate many videos at once, at most `max_concurrent` in flight.

    Args:
        requests: The generations to make: prompt, aspect ratio, images and options each.
        max_concurrent: Most generations in flight at once (the official API allows 10).
        credentials: A LumaRelayCredentials block, or the name of a saved one.
        destination: Local folder, fsspec URL, or a LocalFileSystem/RemoteFileSystem block.
        timeout_seconds: Longest wait for each generation, in seconds.
        poll_interval_seconds: First interval between polls.
        max_poll_interval_seconds: Longest interval between polls.
        assets: Files to download: video, thumbnail, last_frame.
        fail_when: End the flow run Failed when all, any, or never of the generations fail.

    Example:
        ```python
        from luma_prefect import GenerationRequest
        from luma_prefect.flows import generate_videos

        requests = [GenerationRequest(prompt=p) for p in ("a fox", "a cat")]
        outcomes = await generate_videos(requests, max_concurrent=2)
        ```
    """
    if max_concurrent < 1:
        raise LumaError("max_concurrent must be at least 1.")
    block = await resolve_credentials(credentials)
    gate = asyncio.Semaphore(max_concurrent)
    options = _WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds)

    async def one(position: int, request: GenerationRequest) -> GenerationOutcome:
        async with gate:
            return await _generate_one(
                block, request, destination, options, list(assets), f"item-{position}"
            )

    outcomes = list(
        await asyncio.gather(
            *(one(i, GenerationRequest.model_validate(r)) for i, r in enumerate(requests))
        )
    )
    await _report_batch(outcomes, "luma-generate-videos", fail_when)
    return outcomes


@flow(name="collect-generations", log_prints=False)
async def collect_generations(
    generation_ids: list[str],
    credentials: CredentialsInput = DEFAULT_CREDENTIALS,
    destination: Destination = DEFAULT_DESTINATION,
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    batch_size: int = 50,
    assets: list[AssetName] = list(DEFAULT_ASSETS),  # noqa: B006
    fail_when: FailWhen = "all",
) -> list[GenerationOutcome]:
    """Wait for existing generations together, then download and publish each as it completes.

    Args:
        generation_ids: Ids of generations already submitted to the relay.
        credentials: A LumaRelayCredentials block, or the name of a saved one.
        destination: Local folder, fsspec URL, or a LocalFileSystem/RemoteFileSystem block.
        timeout_seconds: Longest wait for the whole batch, in seconds.
        poll_interval_seconds: First interval between polls.
        max_poll_interval_seconds: Longest interval between polls.
        batch_size: Ids per batch query to the relay.
        assets: Files to download: video, thumbnail, last_frame.
        fail_when: End the flow run Failed when all, any, or never of the ids fail.

    Example:
        ```python
        from luma_prefect.flows import collect_generations

        outcomes = await collect_generations(["4665a07c-7641-4809-a133-10786201bb56"])
        ```
    """
    block = await resolve_credentials(credentials)
    options = _WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds)
    outcomes = await _collect(
        block, list(generation_ids), destination, options, list(assets), batch_size
    )
    await _report_batch(outcomes, "luma-collect-generations", fail_when)
    return outcomes


@flow(name="collect-pending", log_prints=False)
async def collect_pending(
    credentials: CredentialsInput = DEFAULT_CREDENTIALS,
    destination: Destination = DEFAULT_DESTINATION,
    timeout_seconds: float = 600.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    batch_size: int = 50,
    assets: list[AssetName] = list(DEFAULT_ASSETS),  # noqa: B006
) -> list[GenerationOutcome]:
    """Finish every generation in the destination's ledger that is not yet published.

    Picks up what a crashed or timed-out run left behind, whoever submitted it; safe to run
    on a schedule, also twice at once (claims keep one publish per generation).

    Args:
        credentials: A LumaRelayCredentials block, or the name of a saved one.
        destination: The destination whose ledger to sweep.
        timeout_seconds: Longest wait for the pending generations, in seconds.
        poll_interval_seconds: First interval between polls.
        max_poll_interval_seconds: Longest interval between polls.
        batch_size: Ids per batch query to the relay.
        assets: Files to download: video, thumbnail, last_frame.

    Example:
        ```python
        from luma_prefect.flows import collect_pending

        await collect_pending(credentials="luma-relay", destination="./luma-output")
        ```
    """
    block = await resolve_credentials(credentials)
    logger = get_run_logger()
    ledger = Ledger(storage_for(destination))
    records = ledger.unfinished()
    mine = [r for r in records if _same_relay(r, block) and await _left_behind(ledger, r)]
    if len(mine) < len(records):
        logger.info(
            "%d unfinished generation(s) are left alone: their flow run is still at work, "
            "or they belong to another relay.",
            len(records) - len(mine),
        )
    logger.info("%d unfinished generation(s) in the ledger.", len(mine))
    if not mine:
        return []
    options = _WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds)
    outcomes = await _collect(
        block,
        [r.generation_id for r in mine],
        destination,
        options,
        list(assets),
        batch_size,
        skip_published=True,
    )
    await _report_batch(outcomes, "luma-collect-pending", "never")
    return outcomes


class _WaitOptions:
    __slots__ = ("max_poll_interval_seconds", "poll_interval_seconds", "timeout_seconds")

    def __init__(self, timeout: float, poll: float, max_poll: float) -> None:
        self.timeout_seconds = timeout
        self.poll_interval_seconds = poll
        self.max_poll_interval_seconds = max(max_poll, poll)

    def as_kwargs(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}


async def _generate_one(
    block: LumaRelayCredentials,
    request: GenerationRequest,
    destination: Destination,
    options: _WaitOptions,
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
    return await _deliver(block, generation, destination, ledger, assets, request)


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
            relay_base_url=block.base_url,
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


async def _collect(
    block: LumaRelayCredentials,
    generation_ids: list[str],
    destination: Destination,
    options: _WaitOptions,
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
                _deliver(block, g, destination, ledger, assets, None, skip_published=skip_published)
                for g in ready
            )
        )
        outcomes.update((o.generation_id, o) for o in delivered)
        remaining = [i for i, r in zip(remaining, results, strict=True) if r is None]
    return [outcomes[i] for i in dict.fromkeys(generation_ids)]


async def _deliver(
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


async def _left_behind(ledger: Ledger, record: LedgerRecord) -> bool:
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


def _same_relay(record: LedgerRecord, block: LumaRelayCredentials) -> bool:
    return record.relay_base_url in (None, block.base_url)


async def _report_batch(
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
