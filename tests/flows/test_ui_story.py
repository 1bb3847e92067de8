"""What a user sees in the Prefect UI of a batch: each generation's story, read back
through the Prefect API (task runs, their logs, the batch table, the events) as the UI
reads it, with two task runs per generation and one wait for the whole batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterTaskRunId,
)
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)

from luma_prefect import GenerationRequest
from luma_prefect.flows import generate_videos
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}
T = TypeVar("T")


async def _until(probe: Callable[[], Awaitable[T]], what: str, timeout: float = 60.0) -> T:
    """The API records task runs, logs and events asynchronously: read until they are in."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"the Prefect API never showed {what}"
        await asyncio.sleep(0.25)


async def test_each_generation_of_a_batch_tells_its_story_in_the_ui(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="doomed"))
    prompts = ["a fox", "a doomed cat", "an owl"]
    started = time.time()

    state = await generate_videos(
        [GenerationRequest(prompt=p) for p in prompts],
        max_concurrent=2,
        credentials=sim.credentials(),
        destination=str(tmp_path),
        fail_when="never",
        return_state=True,
        **FAST,
    )
    outcomes = await state.result()  # type: ignore[misc]
    flow_run_id = state.state_details.flow_run_id
    by_prompt = {p: o for p, o in zip(prompts, outcomes, strict=True)}
    assert [o.status for o in outcomes] == ["published", "failed", "published"]
    ids = {p: o.generation_id for p, o in by_prompt.items()}

    async with get_client() as client:
        runs_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))

        async def task_runs() -> dict[str, Any]:
            runs = await client.read_task_runs(flow_run_filter=runs_filter)
            done = [r for r in runs if r.state and r.state.is_final()]
            return {r.name: r for r in done} if len(done) == 6 else {}

        # Two task runs per generation at most, one wait for the batch.
        runs = await _until(task_runs, "six finished task runs")
        submits = {p: f"submit {p}" for p in prompts}
        delivers = {p: f"deliver {ids[p][:8]}" for p in ("a fox", "an owl")}
        assert sorted(runs) == sorted([*submits.values(), *delivers.values(), "wait 3 generations"])
        relay_tag = f"luma-relay:127.0.0.1:{sim.base_url.rsplit(':', 1)[1]}"
        for run in runs.values():
            assert {"luma", relay_tag} <= set(run.tags), run.name
        assert all(r.state.is_completed() for r in runs.values())

        async def logs_of(name: str, needle: str) -> list[str]:
            logs = await client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[runs[name].id]))
            )
            return [log.message for log in logs if needle in log.message]

        # Submitted: which item became which generation, and when.
        for prompt in prompts:
            submit = runs[submits[prompt]]
            said = await _until(
                lambda s=submits[prompt], i=ids[prompt]: logs_of(s, i),
                f"the submit log of {prompt!r}",
            )
            assert f"Submitted generation {ids[prompt]}" in said[0]
            assert submit.end_time is not None and submit.end_time.timestamp() >= started

        # Downloaded and published: the deliver task run of each, its line naming the files.
        for prompt in ("a fox", "an owl"):
            name = delivers[prompt]
            assert runs[name].start_time >= runs[submits[prompt]].end_time
            (said,) = await _until(
                lambda n=name: logs_of(n, "Downloaded and published generation"), "delivery"
            )
            assert ids[prompt] in said and "video " in said and "manifest.json" in said
            assert not await logs_of(name, "Published generation")  # one line, not two

        # The batch table: one row per generation, its times and why it failed.
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["luma-generate-videos"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
        (table,) = [a for a in artifacts if a.type == "table"]
        # The one generation that failed has its own artifact: why, and what to do next.
        (failure,) = [a for a in artifacts if a.type == "markdown"]
        assert "Frame moderation failed" in failure.data and "What to do next" in failure.data
        rows = {row["generation_id"]: row for row in _table(table.data)}
        for prompt in ("a fox", "an owl"):
            row = rows[ids[prompt]]
            assert row["outcome"] == "published"
            assert row["submitted"] <= row["completed"] <= row["downloaded"] <= row["published"]
            assert row["submitted"] and row["published"]
        doomed = rows[ids["a doomed cat"]]
        assert doomed["outcome"] == "failed"
        assert "Frame moderation failed" in doomed["error"]
        assert doomed["submitted"] and doomed["failed"] and not doomed["published"]

        # The events an automation would match: published (with its times), or failed + why.
        async def events() -> dict[tuple[str, str], Any]:
            page = await client.read_events(
                filter=EventFilter(
                    occurred=EventOccurredFilter(since=_at(started - 60)),
                    event=EventNameFilter(prefix=["luma."]),
                    resource=EventResourceFilter(id=[f"luma.generation.{i}" for i in ids.values()]),
                ),
                limit=50,
            )
            found = {
                (e.event, e.resource.id.removeprefix("luma.generation.")): e for e in page.events
            }
            return found if len(found) >= 3 else {}

        seen = await _until(events, "three luma events")
        assert len(seen) == 3, sorted(seen)  # nothing else about these generations
        for prompt in ("a fox", "an owl"):
            published = seen[("luma.generation.published", ids[prompt])]
            when = {s["state"]: s["at"] for s in published.payload["states"]}
            assert when["submitted"] <= when["completed"] <= when["published"]
        failed = seen[("luma.generation.failed", ids["a doomed cat"])]
        assert failed.payload["failure_reason"] == "Frame moderation failed"
        assert ("luma.generation.published", ids["a doomed cat"]) not in seen
        assert ("luma.generation.completed", ids["a doomed cat"]) not in seen


def _table(data: Any) -> list[dict[str, Any]]:
    import json

    return list(json.loads(data) if isinstance(data, str) else data)


def _at(epoch: float) -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc)
