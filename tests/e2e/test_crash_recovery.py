"""A worker killed with SIGKILL loses nothing and pays nothing twice: collect-pending finishes.

Each test kills the process running a generate-video flow run at a chosen moment, then
starts the collect-pending deployment on the same destination and checks the generation was
paid once, downloaded by one run and published once.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psutil

from luma_prefect.ledger._records import Ledger
from luma_prefect.storage import storage_for

from ._stack import FAST_POLLS, Stack, eventually

ASSET_FILES = ("video.mp4", "thumbnail.jpg", "last_frame.jpg")


def _published_once(stack: Stack, destination: Path, generation_id: str, prompt: str) -> None:
    """Files and manifest in place, one `published` in the ledger, no claim left, one submit."""
    folder = destination / generation_id
    for name in (*ASSET_FILES, "manifest.json"):
        assert (folder / name).is_file(), f"{name} missing\n{stack.report()}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generation_id"] == generation_id
    assert manifest["prompt"] == prompt
    record = stack.record(destination, generation_id)
    assert record["status"] == "published", record
    assert [h["status"] for h in record["history"]].count("published") == 1, record["history"]
    assert _claim_holder(destination, generation_id) is None
    assert stack.counters()["submits_by_prompt"][prompt] == 1


def _claim_holder(destination: Path, generation_id: str) -> str | None:
    return Ledger(storage_for(str(destination))).claim_owner(generation_id)


async def _sweep(stack: Stack, destination: Path) -> None:
    """Run the collect-pending deployment on `destination` and check it Completed."""
    flow_run_id = await stack.run_deployment(
        "collect-pending/collect-pending", destination=str(destination), **FAST_POLLS
    )
    run = await stack.wait_for_final(flow_run_id)
    assert run.state.type.value == "COMPLETED", f"{run.state}\n{stack.report()}"


async def test_flow_run_killed_mid_wait_is_finished_by_collect_pending(
    stack: Stack, tmp_path: Path
) -> None:
    """Guards the ledger written right after the submit: the serve child running the flow
    run is SIGKILLed while it polls; the runner marks the run Crashed, and collect-pending
    downloads and publishes the generation without a second submit."""
    destination = tmp_path / "out"
    prompt = "e2e crash mid-wait: a paper boat drifting down a rainy street"
    flow_run_id = await stack.run_deployment(
        "generate-video/generate-video", prompt=prompt, destination=str(destination), **FAST_POLLS
    )
    record = await stack.submitted(destination, prompt)
    generation_id = record["generation_id"]

    def polled_a_few_times() -> bool:
        return stack.counters()["queries_by_generation"].get(generation_id, 0) >= 3

    await eventually(polled_a_few_times, "a few polls of the generation", details=stack.report)
    child = stack.flow_run_process(flow_run_id)
    child.send_signal(signal.SIGKILL)
    psutil.wait_procs([child], timeout=30)
    assert not child.is_running()

    crashed = await stack.wait_for_state(flow_run_id, {"CRASHED"}, timeout=60)
    assert crashed.state.type.value == "CRASHED"
    record = stack.record(destination, generation_id)
    assert record["status"] == "submitted"
    assert stack.counters()["media_requests_by_generation"].get(generation_id, 0) == 0

    stack.advance()  # the relay finishes the generation while no worker is watching
    await _sweep(stack, destination)

    _published_once(stack, destination, generation_id, prompt)
    # Only the sweep downloaded: one request per file.
    counters = stack.counters()
    assert counters["media_requests_by_generation"][generation_id] == len(ASSET_FILES)


async def test_process_killed_mid_download_is_finished_by_collect_pending(
    stack: Stack, tmp_path: Path
) -> None:
    """Guards the claim of a dead worker: a process of its own runs generate-video and is
    SIGKILLed while it holds the claim and waits on the (slowed) media; nobody marks its
    flow run Crashed, yet collect-pending breaks the claim, downloads once and publishes."""
    destination = tmp_path / "out"
    prompt = "e2e crash mid-download: a lighthouse in a winter storm"
    fault_id = stack.add_fault(
        kind="slow", routes=["media"], delay_seconds=600, prompt_contains="e2e crash mid-download"
    )
    before: dict[str, Any] = stack.counters()
    code = (
        "import asyncio\n"
        "from luma_prefect.flows import generate_video\n"
        f"asyncio.run(generate_video(prompt={prompt!r}, credentials='luma-relay', "
        f"destination={str(destination)!r}, poll_interval_seconds=0.5, "
        "max_poll_interval_seconds=1.0))\n"
    )
    worker = stack.python("worker-killed-mid-download", code)
    record = await stack.submitted(destination, prompt)
    generation_id = record["generation_id"]
    stack.advance()

    def downloading() -> bool:
        media = stack.counters()["media_requests_by_generation"].get(generation_id, 0)
        return media >= 1 and _claim_holder(destination, generation_id) is not None

    await eventually(downloading, "the worker to claim and request the media", details=stack.report)
    stack.processes.kill(worker)
    at_kill = stack.counters()
    assert at_kill["bytes_served"] == before["bytes_served"]  # not one media byte got out
    killed_run = await stack.read_run(record["flow_run_id"])
    assert killed_run.state.type.value == "RUNNING"  # no runner to mark it Crashed
    assert _claim_holder(destination, generation_id) == record["flow_run_id"]

    stack.remove_fault(fault_id)
    await _sweep(stack, destination)

    _published_once(stack, destination, generation_id, prompt)
    after = stack.counters()
    media = after["media_requests_by_generation"][generation_id]
    assert media == at_kill["media_requests_by_generation"][generation_id] + len(ASSET_FILES)
    sizes = sum((destination / generation_id / name).stat().st_size for name in ASSET_FILES)
    assert after["bytes_served"] - at_kill["bytes_served"] == sizes
