"""The dead-worker automation: what it watches, and installing it twice leaves one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client

from luma_prefect.fleet import (
    AUTOMATION_NAME,
    PENDING_AUTOMATION_NAME,
    install_automations,
    pending_automation,
    zombie_automation,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_automation_crashes_luma_runs_silent_for_the_window() -> None:
    automation = zombie_automation(45)
    trigger = automation.trigger
    assert trigger.posture.value == "Proactive"
    # The start opens the window too: a run killed before its first heartbeat reached the
    # server sent none.
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Running"} <= trigger.after
    assert not trigger.after & {"prefect.flow-run.Pending", "prefect.flow-run.Completed"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"} <= trigger.expect
    assert trigger.within == timedelta(seconds=45)
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.model_dump(mode="json")["match_related"] == {
        "prefect.resource.id": "prefect.tag.luma",
        "prefect.resource.role": "tag",
    }
    (action,) = automation.actions
    assert action.state.value == "CRASHED"
    assert not zombie_automation(45, all_flow_runs=True).trigger.match_related
    with pytest.raises(ValueError, match="at least 10"):
        zombie_automation(5)


def test_the_pending_automation_crashes_luma_runs_that_never_started() -> None:
    trigger = pending_automation(120).trigger
    assert trigger.posture.value == "Proactive"
    assert trigger.after == {"prefect.flow-run.Pending"}
    assert {"prefect.flow-run.Running", "prefect.flow-run.Crashed"} <= trigger.expect
    assert "prefect.flow-run.Pending" not in trigger.expect
    assert trigger.within == timedelta(seconds=120)
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.model_dump(mode="json")["match_related"]["prefect.resource.id"] == (
        "prefect.tag.luma"
    )
    (action,) = pending_automation(120).actions
    assert action.state.value == "CRASHED" and "retry this flow run" in action.message
    assert "run it again" not in action.message  # a new run could pay twice
    assert not pending_automation(120, all_flow_runs=True).trigger.match_related


async def test_installing_twice_leaves_one_of_each_automation_with_the_last_windows() -> None:
    first = await install_automations(120, pending_within_seconds=600)
    second = await install_automations(60, pending_within_seconds=300)

    names = [AUTOMATION_NAME, PENDING_AUTOMATION_NAME]
    assert [(n, a) for n, a, _ in first] == [(n, "created") for n in names]
    assert [(n, a) for n, a, _ in second] == [(n, "updated") for n in names]
    assert [i for _, _, i in second] == [i for _, _, i in first]
    async with get_client() as client:
        (heartbeats,) = await client.read_automations_by_name(AUTOMATION_NAME)
        (pending,) = await client.read_automations_by_name(PENDING_AUTOMATION_NAME)
        for installed in (heartbeats, pending):
            await client.delete_automation(installed.id)
    assert heartbeats.enabled and pending.enabled
    assert heartbeats.trigger.within == timedelta(seconds=60)
    assert pending.trigger.within == timedelta(seconds=300)
