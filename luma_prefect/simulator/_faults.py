"""The faults switched on in one simulator: matching a request, counting down `times`.

Not thread-safe on its own: `SimulatorState` calls it under its lock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from luma_prefect.simulator._config import Fault, FaultKind

__all__ = ["ActiveFault", "FaultBook", "Target"]


@dataclass(frozen=True)
class Target:
    """What a request is about: the generations it names and their prompts."""

    generation_ids: Sequence[str] = ()
    prompts: Sequence[str] = ()


@dataclass
class ActiveFault:
    """A fault as switched on: its id, what is left of `times`, when it was added."""

    id: str
    fault: Fault
    remaining: int | None
    # The link epoch it opened: links handed out before it count as expired (EXPIRED_LINK).
    epoch: int = 0
    fired: int = field(default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fault": self.fault.to_dict(),
            "remaining": self.remaining,
            "fired": self.fired,
        }


def matches_target(fault: Fault, target: Target) -> bool:
    """Whether the generation/prompt filters of `fault` accept `target` (routes aside)."""
    if fault.generation_id is not None and fault.generation_id not in target.generation_ids:
        return False
    if fault.prompt_contains is not None:
        return any(fault.prompt_contains in prompt for prompt in target.prompts)
    return True


class FaultBook:
    """The active faults of one simulator, in the order they were added."""

    def __init__(self) -> None:
        self._active: list[ActiveFault] = []
        self._ids = itertools.count(1)
        self.fired_by_kind: Counter[str] = Counter()

    def add(self, fault: Fault, epoch: int = 0) -> ActiveFault:
        record = ActiveFault(f"fault-{next(self._ids)}", fault, fault.times, epoch)
        self._active.append(record)
        return record

    def remove(self, fault: Fault | str) -> bool:
        """Drop a fault given as its object (every copy of it) or its id."""
        before = len(self._active)
        self._active = [
            r
            for r in self._active
            if not (r.id == fault if isinstance(fault, str) else r.fault == fault)
        ]
        return len(self._active) != before

    def clear(self) -> None:
        self._active.clear()

    def active(self) -> list[ActiveFault]:
        return list(self._active)

    def peek(
        self,
        kinds: Collection[FaultKind],
        route: str | None,
        target: Target,
        accept: Callable[[ActiveFault], bool] | None = None,
    ) -> ActiveFault | None:
        """The first fault of `kinds` that would act on this request, without firing it."""
        for record in self._active:
            fault = record.fault
            if fault.kind not in kinds:
                continue
            if route is not None and not fault.applies_to(route):
                continue
            if not matches_target(fault, target):
                continue
            if accept is not None and not accept(record):
                continue
            return record
        return None

    def fire(
        self,
        kinds: Collection[FaultKind],
        route: str | None,
        target: Target,
        accept: Callable[[ActiveFault], bool] | None = None,
    ) -> ActiveFault | None:
        """Like `peek`, but the fault found fires: counted, and retired when `times` runs out."""
        record = self.peek(kinds, route, target, accept)
        if record is None:
            return None
        record.fired += 1
        self.fired_by_kind[record.fault.kind.value] += 1
        if record.remaining is not None:
            record.remaining -= 1
            if record.remaining <= 0:
                self._active.remove(record)
        return record
