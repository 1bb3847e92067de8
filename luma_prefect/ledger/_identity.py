"""The identity of one paid submit: which logical request, in which logical run.

A submit is paid at most once per identity. The identity is
`(scope, relay, operation, request)`:

- `scope` is `key:<idempotency_key>` when the user gave one (the same key means the same
  submit in any run, so a key makes the identity explicit across runs), else
  `run:<root flow run id>`: the flow run at the top of the call chain. Task retries, flow
  retries, a retried parent flow (which makes new subflow runs) and `prefect flow-run
  retry` all keep the root flow run id, so none of them pays again. Items of a batch add
  their position (`run:<root>/item-3`).
- `relay` is the base URL, style and route prefix; `operation` is `submit` or
  `extend:<generation id>`; `request` is the request's fingerprint.

The same identity keys the ledger's submit intent (`submits/<identity>.json`) and the
Prefect result of the submit task (`luma-<task name>-<identity>`), so a retried run finds
either.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from luma_prefect._models import GenerationRequest

__all__ = [
    "identity_lock",
    "relay_identity",
    "result_key",
    "root_flow_run_id",
    "root_flow_run_id_sync",
    "submit_identity",
]

# Root of each flow run seen in this process; a run's root never changes.
_ROOTS: dict[str, str] = {}
# A subflow chain deeper than this is a loop in the API's answers, not a real chain.
_MAX_DEPTH = 64


def submit_identity(
    scope: str, relay: str, request: GenerationRequest, operation: str = "submit"
) -> str:
    """The 40-hex identity of one paid submit (see the module doc).

    Example:
        ```python
        key = submit_identity("run:9c1f...", "https://relay|generations|/luma", request)
        ```
    """
    parts = ("v2", scope, relay, operation, request.fingerprint())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def relay_identity(base_url: str, api_style: str, route_prefix: str) -> str:
    """The relay part of an identity (hashed, so a key in a base URL goes nowhere)."""
    return f"{base_url}|{api_style}|{route_prefix}"


def result_key(task_name: str, identity: str) -> str:
    """Where Prefect persists the result of a paid task run for this identity."""
    return f"luma-{task_name}-{identity}"


def _known_root(flow_run_id: str) -> str | None:
    if flow_run_id in _ROOTS:
        return _ROOTS[flow_run_id]
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is not None and str(run.id) == flow_run_id and run.parent_task_run_id is None:
        _ROOTS[flow_run_id] = flow_run_id
        return flow_run_id
    return None


async def root_flow_run_id(flow_run_id: str | uuid.UUID) -> str:
    """The flow run at the top of `flow_run_id`'s chain of parents (itself at the top).

    Example:
        ```python
        root = await root_flow_run_id(flow_run.id)
        ```
    """
    start = str(flow_run_id)
    known = _known_root(start)
    if known:
        return known
    current = start
    async with get_client() as client:
        for _ in range(_MAX_DEPTH):
            run = await client.read_flow_run(uuid.UUID(current))
            if run.parent_task_run_id is None:
                break
            parent = await client.read_task_run(run.parent_task_run_id)
            if parent.flow_run_id is None:
                break
            current = str(parent.flow_run_id)
    _ROOTS[start] = current
    return current


def root_flow_run_id_sync(flow_run_id: str | uuid.UUID) -> str:
    """`root_flow_run_id` for sync callers (a cache key function): no API call at the top."""
    start = str(flow_run_id)
    known = _known_root(start)
    if known:
        return known
    current = start
    with get_client(sync_client=True) as client:
        for _ in range(_MAX_DEPTH):
            run = client.read_flow_run(uuid.UUID(current))
            if run.parent_task_run_id is None:
                break
            parent = client.read_task_run(run.parent_task_run_id)
            if parent.flow_run_id is None:
                break
            current = str(parent.flow_run_id)
    _ROOTS[start] = current
    return current


# Submits of one identity in this process go one at a time: a second equal submit waits
# for the first and reuses its generation instead of finding its intent "in doubt".
_LOCKS: dict[tuple[int, str], asyncio.Lock] = {}


def identity_lock(identity: str) -> asyncio.Lock:
    """The lock that serialises submits of one identity in this process's running loop."""
    slot = (id(asyncio.get_running_loop()), identity)
    lock = _LOCKS.get(slot)
    if lock is None:
        lock = _LOCKS[slot] = asyncio.Lock()
    return lock
