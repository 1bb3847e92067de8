"""The README's "Deployments on a Prefect server", on a real server, through the API the UI uses."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from ._stack import CREDENTIALS_BLOCK, FAST_POLLS, Stack, eventually

ASSET_FILES = ("video.mp4", "thumbnail.jpg", "last_frame.jpg")
DEPLOYMENTS = (
    "generate-video/generate-video",
    "generate-videos/generate-videos",
    "collect-generations/collect-generations",
    "collect-pending/collect-pending",
)


async def _events(stack: Stack, generation_id: str) -> list[Any]:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async with stack.client() as client:
        page = await client.read_events(
            EventFilter(
                event=EventNameFilter(prefix=["luma.generation."]),
                resource=EventResourceFilter(id=[f"luma.generation.{generation_id}"]),
            ),
            limit=50,
        )
    return list(page.events)


async def test_generate_video_deployment_run_publishes_files_artifact_and_events(
    stack: Stack,
) -> None:
    """Guards README step 4: a run started like the UI's Custom run (a prompt, and quick
    polls) ends Completed with the files and manifest in serve.py's destination, a summary
    artifact and both events in the server, after exactly one paid submit."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    prompt = "e2e: a red fox running through fresh snow"
    before = stack.counters()
    flow_run_id = await stack.run_deployment(
        "generate-video/generate-video", prompt=prompt, **FAST_POLLS
    )
    record = await stack.submitted(stack.destination, prompt)
    generation_id = record["generation_id"]
    stack.advance()  # the relay finishes the generation now

    run = await stack.wait_for_final(flow_run_id)
    assert run.state.type.value == "COMPLETED", f"{run.state}\n{stack.report()}"
    assert run.parameters["credentials"] == CREDENTIALS_BLOCK
    assert run.parameters["destination"] == str(stack.destination)
    assert record["flow_run_id"] == str(flow_run_id)

    folder = stack.destination / generation_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generation_id"] == generation_id
    assert manifest["prompt"] == prompt
    for name, file_name in (
        ("video", "video.mp4"),
        ("thumbnail", "thumbnail.jpg"),
        ("last_frame", "last_frame.jpg"),
    ):
        data = (folder / file_name).read_bytes()
        assert data, file_name
        assert manifest["assets"][name]["sha256"] == hashlib.sha256(data).hexdigest()

    async with stack.client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    # One key per flow and deployment (here both are generate-video), the id described.
    summaries = [a for a in artifacts if a.key == "luma-generate-video"]
    assert len(summaries) == 1, [(a.key, a.type) for a in artifacts]
    assert summaries[0].type == "markdown"
    assert generation_id in (summaries[0].description or "")
    assert "![thumbnail](data:image/jpeg;base64," in str(summaries[0].data)

    after = stack.counters()
    assert after["submits_accepted"] - before["submits_accepted"] == 1
    assert after["submits_by_prompt"][prompt] == 1
    assert after["media_requests_by_generation"][generation_id] == len(ASSET_FILES)

    # Events reach the database through the server's event persister, a moment later.
    wanted = {"luma.generation.published"}
    events = await eventually(
        lambda: _events_if(stack, generation_id, wanted), "the published event", 60.0, 0.5
    )
    assert sorted(e.event for e in events) == sorted(wanted)


async def _events_if(stack: Stack, generation_id: str, wanted: set[str]) -> list[Any] | None:
    events = await _events(stack, generation_id)
    return events if {e.event for e in events} >= wanted else None


async def test_serve_registers_the_four_deployments_with_its_options(stack: Stack) -> None:
    """Guards serve.py: the four deployments exist with its credentials and destination,
    and collect-pending carries an active 10-minute schedule."""
    async with stack.client() as client:
        deployments = {name: await client.read_deployment_by_name(name) for name in DEPLOYMENTS}
    for name, deployment in deployments.items():
        assert deployment.parameters["credentials"] == CREDENTIALS_BLOCK, name
        assert deployment.parameters["destination"] == str(stack.destination), name
        assert deployment.paused is False, name
    schedules = deployments["collect-pending/collect-pending"].schedules
    assert [(s.active, s.schedule.interval) for s in schedules] == [(True, timedelta(minutes=10))]
    for name in DEPLOYMENTS[:3]:
        assert deployments[name].schedules == [], name


async def test_server_schedules_collect_pending_every_ten_minutes(stack: Stack) -> None:
    """Guards the README's "collect-pending runs every 10 minutes": the server's scheduler
    turns the schedule into Scheduled flow runs 10 minutes apart, the first in the future
    (so no sweep starts under the other tests)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async def scheduled() -> list[Any]:
        async with stack.client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["collect-pending"])
                )
            )
        return [r for r in runs if r.state and r.state.type.value == "SCHEDULED"]

    # The scheduler looks at new deployments every 5 s: give it 30 s of serve's life.
    waited = max(10.0, 30.0 - (time.monotonic() - stack.serve_started))
    runs = await eventually(scheduled, "scheduled collect-pending runs", waited, 1.0)
    starts = sorted(r.expected_start_time for r in runs)
    assert starts[0] > datetime.now(timezone.utc) + timedelta(minutes=5)
    assert all(b - a == timedelta(minutes=10) for a, b in itertools.pairwise(starts))
