"""Flows that chain it all: submit (or take ids), wait, download, publish.

Each flow works from the Prefect UI (typed, described parameters) and as a subflow of a
larger media pipeline. Every paid generation goes into the ledger in the destination right
after the relay accepts it, so `collect_pending` can finish whatever a dead worker left.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger

from luma_prefect._exceptions import LumaError
from luma_prefect._models import (
    AspectRatio,
    Duration,
    FormText,
    GenerationRequest,
    ModelName,
    Resolution,
)
from luma_prefect._outcomes import AssetName, GenerationOutcome, PublishedGeneration
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.delivery._publish import report_failures
from luma_prefect.flows._batch import (
    FailWhen,
    WaitOptions,
    collect,
    generate_many,
    generate_one,
    report_batch,
)
from luma_prefect.flows._deliver import left_behind
from luma_prefect.flows._submit import settle_in_doubt
from luma_prefect.flows._sweep import plan_sweep, report_unswept
from luma_prefect.ledger._records import Ledger, LedgerRecord
from luma_prefect.storage import storage_for
from luma_prefect.tasks import _names as names
from luma_prefect.tasks import resolve_credentials
from luma_prefect.tasks._common import CredentialsInput, Destination
from luma_prefect.tasks._progress import BatchProgress

__all__ = ["collect_generations", "collect_pending", "generate_video", "generate_videos"]

DEFAULT_CREDENTIALS = "luma-relay"
DEFAULT_DESTINATION = "luma-output"
DEFAULT_ASSETS: tuple[AssetName, ...] = ("video", "thumbnail", "last_frame")


@flow(name="generate-video", flow_run_name=names.video_run_name, log_prints=False)
async def generate_video(
    prompt: FormText = "",
    aspect_ratio: AspectRatio = "16:9",
    image_url: FormText = "",
    image_end_url: FormText = "",
    loop: bool = False,
    model: ModelName = "",
    resolution: Resolution = "",
    duration: Duration = "",
    credentials: CredentialsInput = DEFAULT_CREDENTIALS,
    destination: Destination = DEFAULT_DESTINATION,
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    assets: list[AssetName] = list(DEFAULT_ASSETS),  # noqa: B006 (Prefect needs a value)
    idempotency_key: FormText = "",
) -> PublishedGeneration:
    """Generate one video: submit, wait, download the files, publish the results.

    Args:
        prompt: What the video shows, in a sentence or two. May stay empty only when a
            start image (image_url) is given.
        aspect_ratio: Frame shape: 16:9, 9:16, 1:1, 4:3, 3:4, 21:9 or 9:21.
        image_url: Optional start frame: an http(s) URL or a data:image base64 URI.
        image_end_url: Optional end frame: an http(s) URL or a data:image base64 URI.
        loop: Make the video loop seamlessly.
        model: Empty: the relay's default. Relays (styles generations, task) know ray-v2
            and ray-v1; Luma's official API ray-2, ray-flash-2 and ray-1-6. "other value"
            takes any name a relay documents.
        resolution: Empty: the relay's default. 720p or 1080p where the relay takes one.
        duration: Empty: the relay's default (about 5 s). 5s where the relay takes one.
        credentials: A LumaRelayCredentials block, or the name of a saved one.
        destination: Local folder, fsspec URL, or a LocalFileSystem/RemoteFileSystem block.
        timeout_seconds: Longest wait for the generation, in seconds.
        poll_interval_seconds: First interval between polls; it grows up to the maximum.
        max_poll_interval_seconds: Longest interval between polls.
        assets: Files to download: video, thumbnail, last_frame.
        idempotency_key: Optional. Empty: the request is paid once per run, whatever
            retries it. The same key is the same paid submit in any run; a new key pays anew.

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
    block = await resolve_credentials(credentials)
    with names.run_tags(block.base_url):
        outcome = await generate_one(
            block,
            request,
            destination,
            WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds),
            list(assets),
            idempotency_key or None,
        )
    if outcome.published is None:
        await report_failures([outcome])
        raise outcome.exception or LumaError(
            outcome.error or f"Generation {outcome.generation_id} was not published.",
            generation_id=outcome.generation_id,
        )
    return outcome.published


@flow(name="generate-videos", flow_run_name=names.videos_run_name, log_prints=False)
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
    idempotency_key: FormText = "",
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
        idempotency_key: Optional. Empty: each item is paid once per run (retries
            included); with a key, once per key and item position in any run.

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
    options = WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds)
    progress = BatchProgress(len(requests))
    await progress.start()
    with names.run_tags(block.base_url):
        outcomes = await generate_many(
            block,
            [GenerationRequest.model_validate(r) for r in requests],
            destination,
            options,
            list(assets),
            idempotency_key or None,
            max_concurrent,
            on_outcome=progress.add,
        )
    await progress.finish()
    await report_failures(outcomes)
    await report_batch(outcomes, "luma-generate-videos", fail_when, destination)
    return outcomes


@flow(name="collect-generations", flow_run_name=names.collect_run_name, log_prints=False)
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
    options = WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds)
    progress = BatchProgress(len(generation_ids))
    await progress.start()
    with names.run_tags(block.base_url):
        outcomes = await collect(
            block,
            list(generation_ids),
            destination,
            options,
            list(assets),
            batch_size,
            on_outcome=progress.add,
        )
    await progress.finish()
    await report_failures(outcomes)
    await report_batch(outcomes, "luma-collect-generations", fail_when, destination)
    return outcomes


@flow(name="collect-pending", flow_run_name=names.sweep_run_name, log_prints=False)
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

    Picks up what a crashed or timed-out run left behind, whoever submitted it, each with
    the saved credentials block that submitted it (this flow's `credentials` finish those
    submitted with an unsaved block for the same relay). A generation it cannot finish is
    reported by id with the reason (log, artifact, `luma.generation.unswept` event). Safe
    to run on a schedule, also twice at once (claims keep one publish per generation).
    Submits in doubt (the relay may have created a generation nobody recorded) are
    resolved where the submit's persisted result or the relay's list of recent
    generations tells, and every other one is reported: log, `luma.submit.in-doubt`
    event, `luma-submits-in-doubt` artifact. Resolve those with `luma-prefect resolve`.

    Args:
        credentials: Credentials for generations submitted with an unsaved block.
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
    # First the submits whose outcome is unknown: resolved ones join the records below.
    await settle_in_doubt(block, ledger, destination)
    records = await asyncio.to_thread(ledger.unfinished)
    pending = [r for r in records if await left_behind(ledger, r)]
    if len(pending) < len(records):
        logger.info(
            "%d unfinished generation(s) are left to their flow runs, still at work.",
            len(records) - len(pending),
        )
    plan = await plan_sweep(pending, block)
    await report_unswept(plan.unswept)
    logger.info(
        "%d unfinished generation(s) to finish, with %d credentials block(s); %d cannot be.",
        sum(len(group) for _, group in plan.groups),
        len(plan.groups),
        len(plan.unswept),
    )
    if not pending:
        return []
    options = WaitOptions(timeout_seconds, poll_interval_seconds, max_poll_interval_seconds)
    progress = BatchProgress(sum(len(group) for _, group in plan.groups))
    await progress.start()

    async def sweep(
        relay: LumaRelayCredentials, group: list[LedgerRecord]
    ) -> list[GenerationOutcome]:
        with names.run_tags(relay.base_url):
            return await collect(
                relay,
                [r.generation_id for r in group],
                destination,
                options,
                list(assets),
                batch_size,
                skip_published=True,
                on_outcome=progress.add,
            )

    swept = await asyncio.gather(*(sweep(relay, group) for relay, group in plan.groups))
    outcomes = [o for group in swept for o in group]
    outcomes += [
        GenerationOutcome(generation_id=u.generation_id, status="error", error=u.reason)
        for u in plan.unswept
    ]
    await progress.finish()
    await report_failures(outcomes)
    await report_batch(outcomes, "luma-collect-pending", "never", destination)
    return outcomes
