"""Tasks that read and create generations: fetch, submit, extend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect.logging.loggers import task_run_logger

from luma_prefect._models import Generation, GenerationId, GenerationRequest
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.ledger._identity import (
    relay_identity,
    result_key,
    root_flow_run_id_sync,
    submit_identity,
)
from luma_prefect.tasks import _names as names
from luma_prefect.tasks._common import (
    READ_OPTIONS,
    RELAY_CALL_BACKSTOP_SECONDS,
    CredentialsInput,
    relay_client,
)


@task(
    name="fetch-generation",
    task_run_name=names.fetch_name,
    tags=[names.RUN_TAG],
    timeout_seconds=RELAY_CALL_BACKSTOP_SECONDS,
    **READ_OPTIONS,
)
async def fetch_generation(
    credentials: CredentialsInput,
    generation_id: GenerationId,
) -> Generation:
    """The current state of one generation.

    Example:
        ```python
        from luma_prefect.tasks import fetch_generation

        generation = await fetch_generation("luma-relay", "4665a07c-...")
        ```
    """
    async with relay_client(credentials) as client:
        return await client.get_generation(generation_id)


@task(
    name="fetch-generations",
    task_run_name=names.fetch_many_name,
    tags=[names.RUN_TAG],
    timeout_seconds=RELAY_CALL_BACKSTOP_SECONDS,
    **READ_OPTIONS,
)
async def fetch_generations(
    credentials: CredentialsInput, generation_ids: list[GenerationId]
) -> list[Generation]:
    """The current state of many generations, in the order asked, through the batch route.

    Example:
        ```python
        from luma_prefect.tasks import fetch_generations

        generations = await fetch_generations(credentials, [first_id, second_id])
        ```
    """
    async with relay_client(credentials) as client:
        return await client.get_generations(generation_ids)


def _paid_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The submit's identity (`luma_prefect.ledger._identity`); None outside flows.

    Scope: the `idempotency_key` when given (the same key is the same submit in any run),
    else the root flow run, so retries at any level reuse the persisted result.
    """
    flow_run_id = context.task_run.flow_run_id if context.task_run else None
    key = parameters.get("idempotency_key")
    if flow_run_id is None and not key:
        return None
    credentials = parameters.get("credentials")
    relay = (
        relay_identity(credentials.base_url, credentials.api_style, credentials.route_prefix)
        if isinstance(credentials, LumaRelayCredentials)
        else f"block:{credentials}"
    )
    scope = str(key) if key else f"run:{root_flow_run_id_sync(str(flow_run_id))}"
    source = parameters.get("generation_id")
    operation = f"extend:{source}" if source else "submit"
    request = GenerationRequest.model_validate(parameters.get("request"))
    cache_key = result_key(context.task.name, submit_identity(scope, relay, request, operation))
    _note_reuse(context, cache_key, scope)
    return cache_key


# Cache keys computed in this process, and scopes already told about a reuse.
_SEEN_KEYS: set[str] = set()
_TOLD_SCOPES: set[str] = set()


def _note_reuse(context: TaskRunContext, cache_key: str, scope: str) -> None:
    """Say once per run that an equal submit reuses a generation, and how not to."""
    if cache_key not in _SEEN_KEYS:
        _SEEN_KEYS.add(cache_key)
        return
    if scope in _TOLD_SCOPES or context.task_run is None:
        return
    _TOLD_SCOPES.add(scope)
    task_run_logger(context.task_run, task=context.task).info(
        "An equal request was already submitted in this run: Prefect reuses its generation "
        "(the task run shows Cached) instead of paying for another. To get another "
        "generation of an equal request, pass a different idempotency_key."
    )


_PAID_OPTIONS: dict[str, Any] = {
    "retries": 0,
    "timeout_seconds": RELAY_CALL_BACKSTOP_SECONDS,
    "cache_key_fn": _paid_cache_key,
    "persist_result": True,
    "cache_expiration": timedelta(days=30),
    "tags": [names.RUN_TAG],
}


@task(name="submit-generation", task_run_name=names.submit_name, **_PAID_OPTIONS)
async def submit_generation(
    credentials: CredentialsInput,
    request: GenerationRequest,
    idempotency_key: str | None = None,
) -> Generation:
    """Submit a paid generation, at most once per (run, relay, request, idempotency_key).

    What is protected: inside one logical run (the root flow run: its task and flow
    retries, a retried parent flow, `prefect flow-run retry`), submitting an equal request
    again returns the generation of the first time, from Prefect's persisted result,
    without calling the relay. An `idempotency_key` replaces the run: the same key is the
    same submit in any run. Pass a different key to really submit an equal request twice.
    The client never retries a POST that may have reached the relay
    (`LumaSubmitUncertainError` instead), and this task has no Prefect retries.

    What is not protected: a crash between the relay's answer and Prefect persisting the
    result (the flows' ledger records that submit as in doubt), and two equal requests
    submitted concurrently in one run before either finished (the flows serialise those).

    Example:
        ```python
        from luma_prefect import GenerationRequest
        from luma_prefect.tasks import submit_generation

        generation = await submit_generation("luma-relay", GenerationRequest(prompt="a fox"))
        ```
    """
    request = GenerationRequest.model_validate(request)
    async with relay_client(credentials) as client:
        generation = await client.submit_generation(request)
    get_run_logger().info("Submitted generation %s (%s).", generation.id, generation.state.value)
    return generation


@task(name="extend-generation", task_run_name=names.extend_name, **_PAID_OPTIONS)
async def extend_generation(
    credentials: CredentialsInput,
    generation_id: GenerationId,
    request: GenerationRequest,
    idempotency_key: str | None = None,
) -> Generation:
    """Continue a completed generation by about 5 s: a new paid generation, submitted once
    per (run, generation, request, idempotency_key) as in `submit_generation`.

    Example:
        ```python
        from luma_prefect import GenerationRequest
        from luma_prefect.tasks import extend_generation

        longer = await extend_generation(credentials, done.id, GenerationRequest(prompt="on"))
        ```
    """
    request = GenerationRequest.model_validate(request)
    async with relay_client(credentials) as client:
        generation = await client.extend_generation(generation_id, request)
    get_run_logger().info("Extended %s as generation %s.", generation_id, generation.id)
    return generation
