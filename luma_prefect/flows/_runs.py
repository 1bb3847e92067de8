"""What the steps ask of Prefect's runs: is a flow run over; a task parameter left unwalked."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.utilities.annotations import quote

__all__ = ["flow_run_finished", "unwalked"]

_FINAL_RUN_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def unwalked(value: object) -> Any:
    """`value` as a task parameter Prefect passes on without walking into it."""
    return quote(value)


async def flow_run_finished(flow_run_id: str) -> bool:
    """True when the Prefect API says the flow run ended; False when it did not, or no
    answer came (never taken for "ended")."""
    try:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
    except Exception:
        return False
    return bool(run.state and run.state.type.value in _FINAL_RUN_STATES)
