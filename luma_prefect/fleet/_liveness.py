"""Dead workers noticed in minutes: an automation that marks silent flow runs Crashed.

Each flow run sends a `prefect.flow-run.heartbeat` event every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (Prefect's default 180, minimum 30). A worker
killed with its flow runs (OOM, SIGKILL, a machine gone) sends nothing more, and its runs
would stay Running forever. The automation installed here (Prefect's "detect zombie flows"
recipe) sets a run Crashed when, after a heartbeat (or its start: a run killed before its
first heartbeat reached the server sent none), neither another heartbeat nor a final state
came within `within` seconds. `collect-pending` finishes the generation of a Crashed
run at its next sweep: the delay from the kill is about `within` plus one sweep interval.

A worker can also die after claiming a run (Pending) and before the run's own process
started: such a run never sends a heartbeat and would stay Pending forever. A second
automation marks a run Crashed when it neither started nor ended within `pending_within`
seconds of going Pending. Nothing of it ran, so nothing was paid: run it again. (A run
that was only slow to start is not harmed: Prefect lets it go from Crashed to Running.)

By default both watch only flow runs tagged `luma` (every luma_prefect deployment is), so
they never crash another team's runs; `all_flow_runs=True` watches every flow run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

__all__ = [
    "AUTOMATION_NAME",
    "DEFAULT_PENDING_WITHIN_SECONDS",
    "DEFAULT_WITHIN_SECONDS",
    "PENDING_AUTOMATION_NAME",
    "install_automations",
    "pending_automation",
    "zombie_automation",
]

AUTOMATION_NAME = "luma-prefect: crash flow runs whose heartbeats stopped"
#: Three heartbeats at Prefect's minimum frequency (30 s): one late heartbeat on a busy
#: worker is not a death. Set PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 on the workers.
DEFAULT_WITHIN_SECONDS = 90
PENDING_AUTOMATION_NAME = "luma-prefect: crash flow runs whose worker died before they started"
#: A flow-run process starts in seconds (about 6 s of imports on a loaded 2-core machine):
#: five minutes Pending is a worker gone, not a slow one.
DEFAULT_PENDING_WITHIN_SECONDS = 300
#: What a run that left Pending sends next: it started, ended, or went back to Scheduled.
_STARTED = (
    "prefect.flow-run.Running",
    "prefect.flow-run.Retrying",
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelling",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.Scheduled",
    "prefect.flow-run.AwaitingRetry",
    "prefect.flow-run.Paused",
    "prefect.flow-run.Suspended",
)
#: What starts the window: a heartbeat, or the run going Running. The server sends the
#: Running event itself; the first heartbeat comes from the run's process, which can be
#: killed before it is delivered (seen in the scale-out test: two runs killed seconds after
#: starting stayed Running forever when only heartbeats opened the window).
_ALIVE = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Running",
    "prefect.flow-run.Retrying",
    "prefect.flow-run.Rerunning",
)
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
    scope = _scope(all_flow_runs)[0]
    return _crash_automation(
        AUTOMATION_NAME,
        f"Installed by luma-prefect: marks {scope} Crashed when no heartbeat or final state "
        f"followed a heartbeat or their start within {within_seconds:g} s (a dead worker), so "
        "collect-pending finishes their generations at its next sweep.",
        after=_ALIVE,
        expect=_EXPECTED,
        within_seconds=within_seconds,
        message=(
            f"No heartbeat for {within_seconds:g} s: its worker died (luma-prefect automation)."
        ),
        all_flow_runs=all_flow_runs,
    )


def pending_automation(
    within_seconds: float = DEFAULT_PENDING_WITHIN_SECONDS, *, all_flow_runs: bool = False
) -> Any:
    """The automation (not yet saved) that crashes runs Pending for `within_seconds`.

    Example:
        ```python
        automation = pending_automation(300)
        print(automation.trigger.after)
        ```
    """
    scope = _scope(all_flow_runs)[0]
    return _crash_automation(
        PENDING_AUTOMATION_NAME,
        f"Installed by luma-prefect: marks {scope} Crashed when they stayed Pending (claimed "
        f"by a worker, never started) for {within_seconds:g} s: the worker likely died before "
        "the run began.",
        after=("prefect.flow-run.Pending",),
        expect=_STARTED,
        within_seconds=within_seconds,
        message=(
            f"Pending for {within_seconds:g} s without starting (its worker likely died after "
            "claiming it). If it starts later it carries on and pays once. To run it, retry "
            "this flow run (its identity keeps the submit to one); a new run of the same "
            "request could pay twice (luma-prefect automation)."
        ),
        all_flow_runs=all_flow_runs,
    )


def _crash_automation(
    name: str,
    description: str,
    *,
    after: tuple[str, ...],
    expect: tuple[str, ...],
    within_seconds: float,
    message: str,
    all_flow_runs: bool,
) -> Any:
    """An automation that marks a flow run Crashed when `after` was not followed by any of
    `expect` within `within_seconds` (Prefect's proactive trigger, per flow run)."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within_seconds < 10:
        raise ValueError("within_seconds must be at least 10 (Prefect's proactive minimum).")
    scoped = _scope(all_flow_runs)[1]
    return AutomationCore(
        name=name,
        description=description,
        trigger=EventTrigger(
            after=set(after),
            expect=set(expect),
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            **scoped,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed", state=StateType.CRASHED, force=False, message=message
            )
        ],
    )


def _scope(all_flow_runs: bool) -> tuple[str, dict[str, Any]]:
    """Which flow runs an automation watches: those tagged luma, or all."""
    from prefect.events.schemas.events import ResourceSpecification

    if all_flow_runs:
        return "every flow run", {}
    tag: dict[str, str | list[str]] = {
        "prefect.resource.id": "prefect.tag.luma",
        "prefect.resource.role": "tag",
    }
    return "flow runs tagged luma", {"match_related": ResourceSpecification(tag)}


async def install_automations(
    within_seconds: float = DEFAULT_WITHIN_SECONDS,
    *,
    pending_within_seconds: float = DEFAULT_PENDING_WITHIN_SECONDS,
    all_flow_runs: bool = False,
) -> list[tuple[str, str, Any]]:
    """Create both automations, or update those of their names: (name, action, id) each,
    action "created" or "updated".

    Idempotent: running it again leaves one automation of each name.

    Example:
        ```python
        for name, action, automation_id in await install_automations(90):
            print(action, name)
        ```
    """
    from prefect.client.orchestration import get_client

    wanted = [
        zombie_automation(within_seconds, all_flow_runs=all_flow_runs),
        pending_automation(pending_within_seconds, all_flow_runs=all_flow_runs),
    ]
    done = []
    async with get_client() as client:
        for automation in wanted:
            existing = await client.read_automations_by_name(automation.name)
            if not existing:
                created = await client.create_automation(automation)
                done.append((automation.name, "created", created))
                continue
            keep, *extra = existing
            await client.update_automation(keep.id, automation)
            for duplicate in extra:  # two installs raced: leave one
                await client.delete_automation(duplicate.id)
            done.append((automation.name, "updated", keep.id))
    return done
