"""The dead-worker automations on a real server: a run left Pending by a dead worker is
marked Crashed by the server's own trigger service; a run that started is left alone.

The heartbeat automation is proven on the real stack by the scale-out test (a SIGKILLed
worker); here the Pending one, scoped to a tag of this test only so that no other test's
run is ever touched.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow
from prefect.events.schemas.events import ResourceSpecification
from prefect.states import Pending, Running

from luma_prefect.fleet import pending_automation

from ._stack import Stack, eventually

WITHIN_SECONDS = 10  # Prefect's minimum for a proactive trigger


@flow(name="luma-pending-probe")
def _probe() -> None:
    """Never run: its runs only exist on the server."""


async def test_a_run_pending_past_the_window_is_crashed_and_a_started_one_is_not(
    stack: Stack,
) -> None:
    tag = f"luma-pending-{uuid.uuid4().hex[:8]}"
    automation = pending_automation(WITHIN_SECONDS)
    automation.trigger.match_related = ResourceSpecification(
        {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
    )
    async with stack.client() as client:
        automation_id = await client.create_automation(automation)
        try:
            # As a worker does: it claims (Pending), then the run's process starts (Running).
            started = await client.create_flow_run(_probe, tags=[tag])
            await client.set_flow_run_state(started.id, Pending())
            orphan = await client.create_flow_run(_probe, tags=[tag])
            await client.set_flow_run_state(orphan.id, Pending())  # its worker died here
            await client.set_flow_run_state(started.id, Running())

            async def crashed() -> Any:
                run = await client.read_flow_run(orphan.id)
                return run if run.state and run.state.type.value == "CRASHED" else None

            run = await eventually(crashed, "the orphan run to be marked Crashed", 120, 1.0)
            # The started run went Pending first, so its window ended first: still Running.
            other = await client.read_flow_run(started.id)
        finally:
            await client.delete_automation(automation_id)
    assert "without starting" in (run.state.message or ""), run.state
    assert other.state is not None and other.state.type.value == "RUNNING", other.state
