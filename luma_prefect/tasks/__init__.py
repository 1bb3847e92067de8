"""Prefect tasks for Luma generations: fetch, submit, extend, and wait until a state.

Every task takes a `LumaRelayCredentials` block, or the name of a saved one, first. Tasks
are async: `await` them in async flows; in sync flows use `.submit(...).result()` (a bare
call of an async Prefect task there returns an un-awaited coroutine).

Retries and time limits, in Prefect terms:
- one retry schedule: the client's `RetryPolicy` (slept through the injectable clock) for
  relay calls, downloads and the wait's error backoff. No task has Prefect retries stacked
  on top (they multiplied one fetch into 18 relay requests);
- read tasks (`fetch_*`, `wait_*`) never cache (`NO_CACHE`: a cached status never changes);
- every task but the waits has a Prefect `timeout_seconds` as a backstop behind the calls'
  own deadlines; a wait's deadline is its parameter (the engine ends within one call of
  it), and the flows give their waits a backstop of that deadline plus a margin;
- `submit_generation` and `extend_generation` reuse their result per (flow run, request):
  see `submit_generation`.
"""

from luma_prefect.tasks._common import (
    resolve_credentials,
    retry_on_transient_errors,
    shared_clients,
)
from luma_prefect.tasks._delivery import download_generation, publish_generation
from luma_prefect.tasks._generations import (
    extend_generation,
    fetch_generation,
    fetch_generations,
    submit_generation,
)
from luma_prefect.tasks._waiting import wait_for_generation, wait_for_generations

__all__ = [
    "download_generation",
    "extend_generation",
    "fetch_generation",
    "fetch_generations",
    "publish_generation",
    "resolve_credentials",
    "retry_on_transient_errors",
    "shared_clients",
    "submit_generation",
    "wait_for_generation",
    "wait_for_generations",
]
