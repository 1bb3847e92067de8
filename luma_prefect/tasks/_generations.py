"""Tasks that read and create generations: fetch, submit, extend."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from luma_prefect._models import Generation, GenerationId, GenerationRequest
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.tasks._common import (
    READ_OPTIONS,
    CredentialsInput,
    client_for,
)


@task(name="fetch-generation", task_run_name="fetch-generation-{generation_id}", **READ_OPTIONS)
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
    async with await client_for(credentials) as client:
        return await client.get_generation(generation_id)


@task(name="fetch-generations", **READ_OPTIONS)
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
    async with await client_for(credentials) as client:
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
    async with await client_for(credentials) as client:
        generation = await client.submit_generation(request)
    get_run_logger().info("Submitted generation %s (%s).", generation.id, generation.state.value)
    return generation


@task(name="extend-generation", **_PAID_OPTIONS)
async def extend_generation(
    credentials: CredentialsInput,
    generation_id: GenerationId,
    request: GenerationRequest,
    idempotency_key: str | None = None,
) -> Generation:
    """Continue a completed generation by about 5 s: a new paid generation, submitted once
    per (flow run, generation, request, idempotency_key) as in `submit_generation`.

    Example:
        ```python
        from luma_prefect import GenerationRequest
        from luma_prefect.tasks import extend_generation

        longer = await extend_generation(credentials, done.id, GenerationRequest(prompt="on"))
        ```
    """
    request = GenerationRequest.model_validate(request)
    async with await client_for(credentials) as client:
        generation = await client.extend_generation(generation_id, request)
    get_run_logger().info("Extended %s as generation %s.", generation_id, generation.id)
    return generation
