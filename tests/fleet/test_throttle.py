"""The relay-wide limit: each request holds a slot, and a deleted limit is made again."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client

from luma_prefect.tasks._throttle import DEFAULT_RELAY_LIMIT, relay_gate, relay_limit_name

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def _slots_held(name: str) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def test_a_limit_deleted_under_a_running_worker_is_created_again() -> None:
    """A person deletes the relay's limit in the UI: the next request of a process that
    already made sure of it still gets a slot (the limit is back, with its default)."""
    from prefect.exceptions import ObjectNotFound

    base_url = f"https://relay-{uuid.uuid4().hex[:8]}.example"
    name = relay_limit_name(base_url)
    gate = relay_gate(base_url)
    async with gate():
        assert await _slots_held(name) == 1
    async with get_client() as client:
        await client.delete_global_concurrency_limit_by_name(name)
        with pytest.raises(ObjectNotFound):
            await client.read_global_concurrency_limit_by_name(name)

    async with gate():
        assert await _slots_held(name) == 1

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
        await client.delete_global_concurrency_limit_by_name(name)
    assert limit.limit == DEFAULT_RELAY_LIMIT
