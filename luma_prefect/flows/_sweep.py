"""Which credentials finish which ledger record: every relay swept, nothing skipped silently.

A record names the saved credentials block that submitted it. A sweep finishes each record
with that block, whatever block the sweep was started with; a record made with an unsaved
block is finished with the sweep's block when both point at the same relay. Any other
record is reported by id, with why and what to do: in the run's log, a table artifact and
a `luma.generation.unswept` event per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prefect import get_run_logger
from prefect.events import emit_event

from luma_prefect._urls import public_url
from luma_prefect.credentials import LumaRelayCredentials, saved_block_name
from luma_prefect.delivery._publish import artifact_key, create_batch_table
from luma_prefect.ledger._records import LedgerRecord

__all__ = ["EVENT_UNSWEPT", "SweepPlan", "Unswept", "plan_sweep", "report_unswept"]

EVENT_UNSWEPT = "luma.generation.unswept"


@dataclass(frozen=True)
class Unswept:
    """A record the sweep cannot finish, and why."""

    generation_id: str
    credentials_block: str | None
    relay: str | None
    reason: str


@dataclass
class SweepPlan:
    """Records grouped by the block that finishes them, and the records left out."""

    groups: list[tuple[LumaRelayCredentials, list[LedgerRecord]]] = field(default_factory=list)
    unswept: list[Unswept] = field(default_factory=list)


def _relay_of(record: LedgerRecord) -> str:
    return record.relay_base_url or "an unrecorded relay"


async def _load(name: str) -> LumaRelayCredentials | str:
    """The saved block, or why it cannot be had."""
    try:
        return await LumaRelayCredentials.aload(name)
    except ValueError:
        return f"its credentials block {name!r} no longer exists"
    except Exception as exc:  # the API is down, the block's type changed...
        return f"its credentials block {name!r} could not be loaded ({type(exc).__name__})"


async def plan_sweep(records: Sequence[LedgerRecord], block: LumaRelayCredentials) -> SweepPlan:
    """Group `records` by the credentials that finish them (`block` is the sweep's own).

    Example:
        ```python
        plan = await plan_sweep(ledger.unfinished(), block)
        for credentials, records in plan.groups:
            ...
        ```
    """
    plan = SweepPlan()
    own_name = saved_block_name(block)
    own_relay = public_url(block.base_url)
    by_block: dict[str, list[LedgerRecord]] = {}
    with_own: list[LedgerRecord] = []
    for record in records:
        name = record.credentials_block
        if name is not None and name != own_name:
            by_block.setdefault(name, []).append(record)
        elif record.relay_base_url in (None, own_relay):
            with_own.append(record)
        else:
            plan.unswept.append(
                Unswept(
                    record.generation_id,
                    name,
                    record.relay_base_url,
                    f"it was submitted to {_relay_of(record)} with an unsaved credentials "
                    f"block, and this sweep's credentials are for {own_relay}",
                )
            )
    if with_own:
        plan.groups.append((block, with_own))
    for name, group in by_block.items():
        loaded = await _load(name)
        if isinstance(loaded, str):
            plan.unswept.extend(
                Unswept(r.generation_id, name, r.relay_base_url, loaded) for r in group
            )
            continue
        relay = public_url(loaded.base_url)
        moved = [r for r in group if r.relay_base_url not in (None, relay)]
        plan.unswept.extend(
            Unswept(
                r.generation_id,
                name,
                r.relay_base_url,
                f"its credentials block {name!r} now points at {relay}, not at "
                f"{_relay_of(r)} which made it",
            )
            for r in moved
        )
        kept = [r for r in group if r not in moved]
        if kept:
            plan.groups.append((loaded, kept))
    return plan


async def report_unswept(unswept: Sequence[Unswept]) -> None:
    """Log, tabulate and emit an event for every record the sweep could not finish.

    Example:
        ```python
        await report_unswept(plan.unswept)
        ```
    """
    if not unswept:
        return
    logger = get_run_logger()
    for item in unswept:
        logger.warning(
            "Generation %s is not swept: %s. Save a LumaRelayCredentials block for %s "
            "under that name (luma-prefect save-credentials), or collect it by id with "
            "collect-generations and credentials for that relay.",
            item.generation_id,
            item.reason,
            item.relay or "its relay",
        )
        emit_event(
            event=EVENT_UNSWEPT,
            resource={
                "prefect.resource.id": f"luma.generation.{item.generation_id}",
                "prefect.resource.name": item.generation_id,
            },
            payload={
                "generation_id": item.generation_id,
                "credentials_block": item.credentials_block,
                "relay": item.relay,
                "reason": item.reason,
            },
        )
    await create_batch_table(
        [
            {
                "generation_id": u.generation_id,
                "credentials_block": u.credentials_block or "",
                "relay": u.relay or "",
                "reason": u.reason,
            }
            for u in unswept
        ],
        artifact_key("luma-collect-pending-unswept"),
    )
