"""Many relays, many workers: sweeps use the block that submitted, relays are throttled."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    TaskRunFilter,
    TaskRunFilterStartTime,
    TaskRunFilterTags,
)

from luma_prefect import GenerationRequest, LumaError
from luma_prefect.flows import collect_pending, generate_video, generate_videos
from luma_prefect.ledger._records import Ledger
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.storage import storage_for
from luma_prefect.tasks._throttle import DEFAULT_RELAY_LIMIT, relay_limit_name

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _timed_out(sim: RelaySimulator, credentials: Any, destination: str, prompt: str) -> str:
    """Submit with `credentials` and let the wait time out: an unfinished ledger record."""
    with pytest.raises(LumaError, match="did not reach completed"):
        await generate_video(
            prompt=prompt,
            credentials=credentials,
            destination=destination,
            timeout_seconds=30.0,
            **FAST,
        )
    (record,) = [
        r for r in Ledger(storage_for(destination)).unfinished() if r.request["prompt"] == prompt
    ]
    return record.generation_id


async def test_a_sweep_with_block_b_finishes_what_block_a_submitted(
    make_sim: Callable[..., RelaySimulator],
    drive_waits: Callable[[RelaySimulator], None],
    tmp_path: Path,
) -> None:
    relay_a, relay_b = make_sim(), make_sim()
    drive_waits(relay_a)  # the generation lives on relay A: its clock must move
    block_a, block_b = _name("relay-a"), _name("relay-b")
    await relay_a.credentials().asave(block_a)
    await relay_b.credentials().asave(block_b)
    destination = str(tmp_path)

    generation_id = await _timed_out(relay_a, block_a, destination, "made with block A")
    raw = (tmp_path / ".luma-ledger" / "generations" / f"{generation_id}.json").read_text()
    assert json.loads(raw)["credentials_block"] == block_a
    assert relay_a.api_key not in raw  # the name, never the key

    outcomes = await collect_pending(credentials=block_b, destination=destination, **FAST)

    assert [(o.generation_id, o.status) for o in outcomes] == [(generation_id, "published")]
    assert (tmp_path / generation_id / "video.mp4").exists()
    assert relay_a.counters().submits_accepted == 1
    assert relay_a.counters().media_requests_by_generation[generation_id] == 3
    assert relay_b.counters().requests == {}  # B was never asked about A's generation


async def test_records_a_sweep_cannot_finish_are_reported_by_id_with_the_reason(
    make_sim: Callable[..., RelaySimulator],
    drive_waits: Callable[[RelaySimulator], None],
    tmp_path: Path,
    events: Callable[[], list[Any]],
) -> None:
    """A deleted block, and an unsaved block for another relay: each record is in the log,
    the outcomes, an artifact row and a `luma.generation.unswept` event; both stay in the
    ledger for a later sweep."""
    from luma_prefect import LumaRelayCredentials

    relay_a, relay_b = make_sim(), make_sim()
    drive_waits(relay_a)
    gone, sweeper = _name("relay-gone"), _name("relay-b")
    await relay_a.credentials().asave(gone)
    await relay_b.credentials().asave(sweeper)
    destination = str(tmp_path)
    deleted = await _timed_out(relay_a, gone, destination, "its block is deleted")
    unsaved = await _timed_out(relay_a, relay_a.credentials(), destination, "unsaved block")
    async with get_client() as client:
        document = await client.read_block_document_by_name(
            gone, LumaRelayCredentials.get_block_type_slug()
        )
        await client.delete_block_document(document.id)

    sweep = await collect_pending(
        credentials=sweeper, destination=destination, return_state=True, **FAST
    )
    outcomes = await sweep.result()  # type: ignore[misc]

    reasons = {o.generation_id: (o.status, o.error or "") for o in outcomes}
    assert set(reasons) == {deleted, unsaved}
    assert reasons[deleted][0] == "error" and "no longer exists" in reasons[deleted][1]
    assert gone in reasons[deleted][1]
    assert reasons[unsaved][0] == "error" and "unsaved credentials block" in reasons[unsaved][1]
    unswept = [e for e in events() if e.event == "luma.generation.unswept"]
    assert sorted(e.payload["generation_id"] for e in unswept) == sorted([deleted, unsaved])
    async with get_client() as client:
        (artifact,) = await client.read_artifacts(
            # This sweep's: other runs on the same API may have made some.
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["luma-collect-pending-unswept"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[sweep.state_details.flow_run_id]),
            ),
        )
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert sorted(r["generation_id"] for r in rows) == sorted([deleted, unsaved])
    still = {r.generation_id for r in Ledger(storage_for(destination)).unfinished()}
    assert still == {deleted, unsaved}
    assert relay_b.counters().requests == {}
    assert relay_a.counters().media_requests_by_generation == {}


async def test_requests_to_one_relay_never_exceed_its_global_concurrency_limit(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    """Six generations at once against a limit of two: the relay never sees more than
    two requests open (its own counter), and the task runs carry the relay's tags."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    name = relay_limit_name(sim.base_url)
    # The simulator is reused, so its address (and the limit and tags named after it) may
    # have served earlier tests: count only this test's runs, and give the limit back its
    # default for the next test on this address. (Deleting it would not do: a process
    # creates a relay's limit once and then counts on it.)
    began = datetime.now(timezone.utc)
    try:
        await _throttled_runs(sim, tmp_path, name, began)
    finally:
        async with get_client() as client:
            with contextlib.suppress(ObjectNotFound):
                await client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=DEFAULT_RELAY_LIMIT)
                )


async def _throttled_runs(sim: RelaySimulator, tmp_path: Path, name: str, began: datetime) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    # Every relay request lasts 0.3 s of real time, so concurrent ones overlap.
    sim.add_fault(Fault(FaultKind.SLOW, routes=("submit", "query"), delay_seconds=0.3))
    requests = [GenerationRequest(prompt=f"throttled {i}") for i in range(6)]

    await generate_video(
        prompt="creates the limit", credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
        assert limit.limit == DEFAULT_RELAY_LIMIT  # created on first use
        await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=2))
    sim.reset_counters()

    outcomes = await generate_videos(
        requests,
        max_concurrent=6,
        credentials=sim.credentials(),
        destination=str(tmp_path),
        **FAST,
    )

    assert [o.status for o in outcomes] == ["published"] * 6
    counters = sim.counters()
    assert counters.max_concurrent_requests == 2, counters.max_concurrent_requests
    assert counters.submits_accepted == 6
    async with get_client() as client:
        tagged = await client.read_task_runs(
            task_run_filter=TaskRunFilter(
                tags=TaskRunFilterTags(all_=["luma", name]),
                start_time=TaskRunFilterStartTime(after_=began),
            ),
            limit=200,
        )
    names = [t.name for t in tagged]
    assert sum(n.startswith("submit ") for n in names) == 7, names
    # generate_video's own wait, and the batch's one wait for its six generations (#12).
    assert sum(n.startswith("wait ") for n in names) == 2, names
    assert "wait 6 generations" in names, names
    assert sum(n.startswith("deliver ") for n in names) == 7, names
