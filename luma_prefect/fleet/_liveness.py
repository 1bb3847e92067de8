"""Dead workers noticed in minutes: an automation that marks silent flow runs Crashed.

Each flow run sends a `prefect.flow-run.heartbeat` event every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (Prefect's default 180, minimum 30). A worker
killed with its flow runs (OOM, SIGKILL, a machine gone) sends nothing more, and its runs
would stay Running forever. The automation installed here (Prefect's "detect zombie flows"
recipe) sets a run Crashed when, after a heartbeat, neither another heartbeat nor a final
state came within `within` seconds. `collect-pending` finishes the generation of a Crashed
run at its next sweep: the delay from the kill is about `within` plus one sweep interval.

By default it watches only flow runs tagged `luma` (every luma_prefect deployment is), so
it never crashes another team's runs; `all_flow_runs=True` watches every flow run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

__all__ = [
    "AUTOMATION_NAME",
    "DEFAULT_WITHIN_SECONDS",
    "install_automations",
    "zombie_automation",
]

AUTOMATION_NAME = "luma-prefect: crash flow runs whose heartbeats stopped"
#: Three heartbeats at Prefect's minimum frequency (30 s): one late heartbeat on a busy
#: worker is not a death. Set PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 on the workers.
DEFAULT_WITHIN_SECONDS = 90
_EXPECTED = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.Paused",
    "prefect.flow-run.Suspended",
)


def zombie_automation(
    within_seconds: float = DEFAULT_WITHIN_SECONDS, *, all_flow_runs: bool = False
) -> Any:
    """The automation (not yet saved) that crashes flow runs silent for `within_seconds`.

    Example:
        ```python
        automation = zombie_automation(90)
        print(automation.trigger.within)
        ```
    """
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within_seconds < 10:
        raise ValueError("within_seconds must be at least 10 (Prefect's proactive minimum).")
    scope = "every flow run" if all_flow_runs else "flow runs tagged luma"
    scoped: dict[str, Any] = (
        {}
        if all_flow_runs
        else {
            "match_related": ResourceSpecification(
                {"prefect.resource.id": "prefect.tag.luma", "prefect.resource.role": "tag"}
            )
        }
    )
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            f"Installed by luma-prefect: marks {scope} Crashed when no heartbeat or final "
            f"state followed a heartbeat within {within_seconds:g} s (a dead worker), so "
            "collect-pending finishes their generations at its next sweep."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect=set(_EXPECTED),
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            **scoped,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                force=False,
                message=(
                    f"No heartbeat for {within_seconds:g} s: its worker died "
                    "(luma-prefect automation)."
                ),
            )
        ],
    )


async def install_automations(
    within_seconds: float = DEFAULT_WITHIN_SECONDS, *, all_flow_runs: bool = False
) -> tuple[str, Any]:
    """Create the automation, or update the one of that name: ("created"|"updated", id).

    Idempotent: running it again leaves one automation named `AUTOMATION_NAME`.

    Example:
        ```python
        action, automation_id = await install_automations(90)
        ```
    """
    from prefect.client.orchestration import get_client

    wanted = zombie_automation(within_seconds, all_flow_runs=all_flow_runs)
    async with get_client() as client:
        existing = await client.read_automations_by_name(AUTOMATION_NAME)
        if not existing:
            return "created", await client.create_automation(wanted)
        keep, *extra = existing
        await client.update_automation(keep.id, wanted)
        for duplicate in extra:  # two installs raced: leave one
            await client.delete_automation(duplicate.id)
        return "updated", keep.id
