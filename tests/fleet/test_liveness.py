"""The dead-worker automation: what it watches, and installing it twice leaves one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client

from luma_prefect.fleet import AUTOMATION_NAME, install_automations, zombie_automation

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_automation_crashes_luma_runs_silent_for_the_window() -> None:
    automation = zombie_automation(45)
    trigger = automation.trigger
    assert trigger.posture.value == "Proactive"
    assert trigger.after == {"prefect.flow-run.heartbeat"}
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


async def test_installing_twice_leaves_one_automation_with_the_last_window() -> None:
    first = await install_automations(120)
    second = await install_automations(60)

    assert first[0] == "created" and second == ("updated", first[1])
    async with get_client() as client:
        (installed,) = await client.read_automations_by_name(AUTOMATION_NAME)
        await client.delete_automation(installed.id)
    assert installed.enabled
    assert installed.trigger.within == timedelta(seconds=60)
