"""Prefect tasks for Luma generations: fetch, submit, extend, and wait until a state.

Every task takes a `LumaRelayCredentials` block, or the name of a saved one, first. Tasks
are async: `await` them in async flows; in sync flows use `.submit(...).result()` (a bare
call of an async Prefect task there returns an un-awaited coroutine).

Retries, in Prefect terms:
- read tasks (`fetch_*`, `wait_*`) never cache (`NO_CACHE`: a cached status never changes)
  and are retried by Prefect with exponential backoff and jitter, except on errors a retry
  cannot mend (auth, not found, bad request, failed generation, wait timeout);
- `submit_generation` and `extend_generation` are never retried by Prefect, and reuse their
  result per (flow run, request): see `submit_generation`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from luma_prefect._exceptions import (
    LumaAuthError,
    LumaConfigurationError,
    LumaDownloadError,
    LumaError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaRequestError,
    LumaSubmitUncertainError,
    LumaWaitTimeout,
)
from luma_prefect._models import Generation, GenerationRequest, GenerationState
from luma_prefect._routes import check_generation_id
from luma_prefect._wait import Clock, SystemClock, WaitSettings, normalise_states
from luma_prefect._wait import wait_for_generations as _wait_engine
from luma_prefect.credentials import LumaRelayCredentials

__all__ = [
    "extend_generation",
    "fetch_generation",
    "fetch_generations",
    "resolve_credentials",
    "retry_on_transient_errors",
    "submit_generation",
    "wait_for_generation",
    "wait_for_generations",
]

CredentialsInput = LumaRelayCredentials | str
StatesInput = Sequence[str | GenerationState] | str

# Errors a retry cannot mend; everything else a read task meets is worth another try.
_FINAL_ERRORS = (
    LumaAuthError,
    LumaConfigurationError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaRequestError,
    LumaSubmitUncertainError,
    LumaWaitTimeout,
)

# The clock of every wait; tests replace it to wait half an hour in milliseconds.
_wait_clock: Clock = SystemClock()


def retry_on_transient_errors(task: Task[Any, Any], task_run: TaskRun, state: State) -> bool:
    """Prefect retry condition: retry, unless the failure is one a retry cannot mend.

    Example:
        ```python
        @task(retries=3, retry_condition_fn=retry_on_transient_errors)
        async def my_read(...): ...
        ```
    """
    error = state.data
    if isinstance(error, LumaDownloadError):
        return error.retryable
    return not isinstance(error, _FINAL_ERRORS)


_READ_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient_errors,
    "cache_policy": NO_CACHE,
}


async def resolve_credentials(credentials: CredentialsInput) -> LumaRelayCredentials:
    """The block itself, or the saved `LumaRelayCredentials` block of that name.

    Example:
        ```python
        credentials = await resolve_credentials("luma-relay")
        ```
    """
    if isinstance(credentials, LumaRelayCredentials):
        return credentials
    if isinstance(credentials, str) and credentials.strip():
        return await LumaRelayCredentials.aload(credentials.strip())
    raise LumaConfigurationError(
        "credentials must be a LumaRelayCredentials block or the name of a saved one "
        f"(got {type(credentials).__name__})."
    )


async def _client(credentials: CredentialsInput, **overrides: Any) -> Any:
    block = await resolve_credentials(credentials)
    return block.get_client(sleep=_wait_clock.sleep, **overrides)


@task(name="fetch-generation", task_run_name="fetch-generation-{generation_id}", **_READ_OPTIONS)
async def fetch_generation(
    credentials: CredentialsInput,
    generation_id: str,
) -> Generation:
    """The current state of one generation.

    Example:
        ```python
        from luma_prefect.tasks import fetch_generation

        generation = await fetch_generation("luma-relay", "4665a07c-...")
        ```
    """
    async with await _client(credentials) as client:
        return await client.get_generation(generation_id)


@task(name="fetch-generations", **_READ_OPTIONS)
async def fetch_generations(
    credentials: CredentialsInput, generation_ids: list[str]
) -> list[Generation]:
    """The current state of many generations, in the order asked, through the batch route.

    Example:
        ```python
        generations = await fetch_generations(credentials, [first_id, second_id])
        ```
    """
    async with await _client(credentials) as client:
        return await client.get_generations(generation_ids)


def _paid_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """One key per (flow run, relay, operation, request, idempotency key); None outside flows."""
    flow_run_id = context.task_run.flow_run_id if context.task_run else None
    if flow_run_id is None:
        return None
    credentials = parameters.get("credentials")
    relay = (
        f"{credentials.base_url}|{credentials.api_style}|{credentials.route_prefix}"
        if isinstance(credentials, LumaRelayCredentials)
        else f"block:{credentials}"
    )
    request = GenerationRequest.model_validate(parameters.get("request"))
    parts = [
        str(flow_run_id),
        context.task.name,
        relay,
        str(parameters.get("generation_id") or ""),
        request.fingerprint(),
        str(parameters.get("idempotency_key") or ""),
    ]
    return "luma-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


_PAID_OPTIONS: dict[str, Any] = {
    "retries": 0,
    "cache_key_fn": _paid_cache_key,
    "persist_result": True,
    "cache_expiration": timedelta(days=30),
}


@task(name="submit-generation", **_PAID_OPTIONS)
async def submit_generation(
    credentials: CredentialsInput,
    request: GenerationRequest,
    idempotency_key: str | None = None,
) -> Generation:
    """Submit a paid generation, at most once per (flow run, request, idempotency_key).

    What is protected: inside one flow run, submitting an equal request again (also after
    the flow run is retried, or resumed from the UI) returns the generation recorded the
    first time, from Prefect's persisted result cache, without calling the relay. Pass a
    different `idempotency_key` to really submit the same request twice in one run. The
    client never retries a POST that may have reached the relay (`LumaSubmitUncertainError`
    instead), and this task has no Prefect retries.

    What is not protected: a crash between the relay's answer and Prefect persisting the
    result (the flows' ledger closes that gap), different flow runs, and two equal requests
    submitted concurrently in one run before either finished.

    Example:
        ```python
        from luma_prefect import GenerationRequest
        from luma_prefect.tasks import submit_generation

        generation = await submit_generation("luma-relay", GenerationRequest(prompt="a fox"))
        ```
    """
    request = GenerationRequest.model_validate(request)
    async with await _client(credentials) as client:
        generation = await client.submit_generation(request)
    get_run_logger().info("Submitted generation %s (%s).", generation.id, generation.state.value)
    return generation


@task(name="extend-generation", **_PAID_OPTIONS)
async def extend_generation(
    credentials: CredentialsInput,
    generation_id: str,
    request: GenerationRequest,
    idempotency_key: str | None = None,
) -> Generation:
    """Continue a completed generation by about 5 s: a new paid generation, submitted once
    per (flow run, generation, request, idempotency_key) as in `submit_generation`.

    Example:
        ```python
        longer = await extend_generation(credentials, done.id, GenerationRequest(prompt="on"))
        ```
    """
    request = GenerationRequest.model_validate(request)
    async with await _client(credentials) as client:
        generation = await client.extend_generation(generation_id, request)
    get_run_logger().info("Extended %s as generation %s.", generation_id, generation.id)
    return generation


@task(name="wait-for-generation", task_run_name="wait-for-{generation_id}", **_READ_OPTIONS)
async def wait_for_generation(
    credentials: CredentialsInput,
    generation_id: str,
    until: StatesInput = ("completed",),
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    progress_artifact: bool = False,
) -> Generation:
    """Wait, in one task run, until the generation reaches a state in `until`.

    Raises `LumaGenerationFailed` when it fails (and `failed` is not in `until`),
    `LumaWaitTimeout` (with the last generation seen) past the deadline, `LumaAuthError` at
    once on a refused key. Relay hiccups (5xx, timeouts, malformed answers, a 404 right after
    submit) are absorbed inside the wait.

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


@task(name="wait-for-generations", **_READ_OPTIONS)
async def wait_for_generations(
    credentials: CredentialsInput,
    generation_ids: list[str],
    until: StatesInput = ("completed",),
    timeout_seconds: float = 1800.0,
    poll_interval_seconds: float = 5.0,
    max_poll_interval_seconds: float = 30.0,
    batch_size: int = 50,
    return_exceptions: bool = False,
    return_when: Literal["all", "first"] = "all",
    progress_artifact: bool = False,
) -> list[Generation | LumaError | None]:
    """Wait for many generations at once, in one task run, polling them through the batch
    route (about `ceil(N / batch_size)` requests a round instead of N).

    Each id leaves the wait when it reaches a target. With `return_exceptions=True` the list
    holds, per id, the `Generation` or the `LumaError` that ended its wait; otherwise the
    first error (in the order asked) is raised once every id is settled.
    With `return_when="first"` it returns as soon as any id settled, with `None` for the
    ids still waiting: process the settled ones and wait again for the rest.

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
    settings = WaitSettings(
        until=normalise_states(until),
        timeout_seconds=timeout_seconds,
        poll_interval_seconds=poll_interval_seconds,
        max_poll_interval_seconds=max(max_poll_interval_seconds, poll_interval_seconds),
    )
    logger = get_run_logger()
    on_progress = None
    if progress_artifact:
        artifact_id = await acreate_progress_artifact(
            progress=0.0, description=f"Waiting for {len(generation_ids)} Luma generation(s)."
        )

        async def on_progress(done: int, total: int) -> None:
            await aupdate_progress_artifact(artifact_id, progress=100.0 * done / max(total, 1))

    async with await _client(credentials, **client_options) as client:
        results = await _wait_engine(
            client,
            generation_ids,
            settings,
            clock=_wait_clock,
            logger=logger,
            on_progress=on_progress,
            return_when=return_when,
        )
    return [results.get(check_generation_id(i)) for i in generation_ids]


# -- download --------------------------------------------------------------------------

from luma_prefect._download import (  # noqa: E402
    ASSET_NAMES,
    DEFAULT_MAX_BYTES,
    VIDEO_SOURCES,
    download_generation_files,
    public_url,
)
from luma_prefect._results import DownloadedGeneration  # noqa: E402
from luma_prefect._storage import storage_for  # noqa: E402

__all__ += ["download_generation"]


def _download_run_name() -> str:
    """`download-<generation id>`, whether the task got a Generation or an id."""
    from prefect.runtime import task_run

    generation = task_run.parameters.get("generation")
    generation_id = getattr(generation, "id", None) or (
        generation.get("id") if isinstance(generation, dict) else generation
    )
    return f"download-{generation_id}"


@task(name="download-generation", task_run_name=_download_run_name, **_READ_OPTIONS)
async def download_generation(
    credentials: CredentialsInput,
    generation: Generation | str,
    destination: Any,
    assets: Sequence[str] = ASSET_NAMES,
    video_sources: Sequence[str] = VIDEO_SOURCES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_concurrent_downloads: int = 3,
) -> DownloadedGeneration:
    """Download a completed generation's files to `<destination>/<generation id>/`.

    `generation` is a `Generation` or a generation id (then fetched first). `destination`
    is a local folder, an fsspec URL (`s3://bucket/luma`, `memory://x`), or a Prefect
    `LocalFileSystem` / `RemoteFileSystem` block. The video comes from the first of
    `video_sources` the generation has (watermark-free first); thumbnail and last frame
    are skipped with a warning when missing. Files stream to disk, are verified (length,
    sha256) and resumed with HTTP Range after a broken connection; expired links are
    refreshed once from the relay; a rerun reuses verified files without downloading.

    Example:
        ```python
        from prefect import flow
        from luma_prefect.tasks import download_generation, wait_for_generation

        @flow
        async def fetch_video(generation_id: str) -> str:
            done = await wait_for_generation("luma-relay", generation_id)
            downloaded = await download_generation("luma-relay", done, "./luma-output")
            return downloaded.assets["video"].path
        ```
    """
    block = await resolve_credentials(credentials)
    storage = storage_for(destination)
    async with await _client(block) as client:
        if not isinstance(generation, Generation):
            generation = (
                Generation.model_validate(generation)
                if isinstance(generation, dict)
                else await client.get_generation(generation)
            )
        downloaded = await download_generation_files(
            client,
            generation,
            storage,
            assets=assets,
            video_sources=video_sources,
            max_bytes=max_bytes,
            max_concurrent=max_concurrent_downloads,
            logger=get_run_logger(),  # type: ignore[arg-type]
        )
    return downloaded.model_copy(
        update={"relay_base_url": public_url(block.base_url), "relay_style": block.api_style}
    )


from datetime import datetime  # noqa: E402

from luma_prefect._publish import (  # noqa: E402
    EVENT_PUBLISHED,
    MANIFEST_NAME,
    artifact_key,
    build_manifest,
    create_summary_artifact,
    emit_generation_event,
    manifest_bytes,
)
from luma_prefect._results import PublishedGeneration  # noqa: E402

__all__ += ["publish_generation"]


@task(
    name="publish-generation",
    task_run_name="publish-{downloaded.generation.id}",
    cache_policy=NO_CACHE,
)
async def publish_generation(
    downloaded: DownloadedGeneration,
    destination: Any = None,
    request: GenerationRequest | None = None,
    timeline: dict[str, datetime] | None = None,
    create_artifacts: bool = True,
    emit_events: bool = True,
) -> PublishedGeneration:
    """Publish a downloaded generation: `manifest.json` beside its files, a markdown
    artifact in the run, and the `luma.generation.published` event.

    `destination` defaults to the one the files were downloaded to; pass the block again
    when that was a filesystem block. The manifest lists the request, the states with their
    times, each file (bytes, sha256, size, source link without secrets) and the relay.

    Example:
        ```python
        from luma_prefect.tasks import download_generation, publish_generation

        downloaded = await download_generation("luma-relay", generation, "./luma-output")
        published = await publish_generation(downloaded)
        print(published.manifest_path)
        ```
    """
    generation = downloaded.generation
    storage = storage_for(downloaded.destination if destination is None else destination)
    folder = check_generation_id(generation.id)
    manifest = build_manifest(downloaded, request=request, timeline=timeline)
    manifest_path = storage.write_bytes(f"{folder}/{MANIFEST_NAME}", manifest_bytes(manifest))
    keys: list[str] = []
    if create_artifacts:
        key = artifact_key("luma-generation", generation.id)
        await create_summary_artifact(downloaded, manifest_path, key)
        keys.append(key)
    events: list[str] = []
    if emit_events:
        files = {name: asset.path for name, asset in downloaded.assets.items()}
        emit_generation_event(
            EVENT_PUBLISHED, generation, {"manifest": manifest_path, "files": files}
        )
        events.append(EVENT_PUBLISHED)
    get_run_logger().info("Published generation %s: %s", generation.id, manifest_path)
    return PublishedGeneration(
        generation_id=generation.id,
        downloaded=downloaded,
        manifest_path=manifest_path,
        artifact_keys=keys,
        events=events,
    )
