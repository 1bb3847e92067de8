"""A batch's one wait can break as a whole: nothing hangs, and nothing more is paid."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import luma_prefect.flows._batch
from luma_prefect import GenerationRequest, LumaError
from luma_prefect.flows import generate_videos
from luma_prefect.simulator import RelaySimulator

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}


async def test_wait_options_are_checked_before_anything_is_paid(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    with pytest.raises(LumaError, match="must be positive"):
        await generate_videos(
            [GenerationRequest(prompt="never sent")],
            credentials=sim.credentials(),
            destination=str(tmp_path),
            poll_interval_seconds=0.0,
        )

    assert sim.counters().submits_accepted == 0


async def test_a_wait_that_fails_before_it_starts_ends_the_batch_and_stops_its_submits(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait task refused before its body ran (as Prefect can): each generation already
    submitted ends with the reason (its record stays in the ledger); the others are not
    submitted at all, so not paid."""

    async def refused(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the task run was refused")

    monkeypatch.setattr(luma_prefect.flows._batch, "follow_generations_task", refused)

    outcomes = await asyncio.wait_for(  # a bound on a hang, not a pause
        generate_videos(
            [GenerationRequest(prompt=f"clip {i}") for i in range(3)],
            max_concurrent=1,
            credentials=sim.credentials(),
            destination=str(tmp_path),
            fail_when="never",
            **FAST,
        ),
        timeout=120,
    )

    assert [o.status for o in outcomes] == ["error"] * 3
    assert all("the task run was refused" in (o.error or "") for o in outcomes)
    submitted = [o for o in outcomes if o.generation_id]
    assert sim.counters().submits_accepted == len(submitted) <= 1
    assert sum("Not submitted" in (o.error or "") for o in outcomes) >= 2
