"""Full flow runs against the simulator over loopback HTTP, on Prefect's embedded API."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.filesystems import RemoteFileSystem
from prefect.states import State

from luma_prefect import GenerationRequest, LumaError, LumaSubmitUncertainError
from luma_prefect.flows import (
    collect_generations,
    collect_pending,
    generate_video,
    generate_videos,
)
from luma_prefect.ledger._records import Ledger
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.storage import storage_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}


async def _artifacts(key: str, state: State[Any]) -> list[Any]:
    """The versions of artifact `key` made by the flow run of `state` (other runs
    on the same API make versions of the same key)."""
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_generate_video_leaves_files_manifest_artifact_and_events(
    sim: RelaySimulator,
    tmp_path: Path,
    events: Callable[[], list[Any]],
    storage_on_loop: list[str],
) -> None:
    state = await generate_video(
        prompt="a red fox in the snow",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        return_state=True,
        **FAST,
    )
    published = await state.result()  # type: ignore[misc]
    assert storage_on_loop == []

    folder = tmp_path / published.generation_id
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        ".download.json",
        "last_frame.jpg",
        "manifest.json",
        "thumbnail.jpg",
        "video.mp4",
    ]
    manifest_text = (folder / "manifest.json").read_text()
    manifest = json.loads(manifest_text)
    assert manifest["generation_id"] == published.generation_id
    assert manifest["prompt"] == "a red fox in the snow"
    assert manifest["request"]["prompt"] == "a red fox in the snow"
    assert manifest["relay"] == {"base_url": sim.base_url, "style": "generations"}
    assert [s["state"] for s in manifest["states"]][:2] == ["created", "submitted"]
    for name, file_name in (("video", "video.mp4"), ("thumbnail", "thumbnail.jpg")):
        entry = manifest["assets"][name]
        assert entry["file"] == file_name
        assert entry["sha256"] == _sha256(folder / file_name)
        assert entry["bytes"] == (folder / file_name).stat().st_size
        assert "?" not in entry["source_url"]  # signed links lose their query string
    assert sim.api_key not in manifest_text

    counters = sim.counters()
    assert counters.submits_accepted == 1

    # One key per flow (and deployment): this run's version describes this generation.
    latest = max(await _artifacts("luma-generate-video", state), key=lambda a: a.created)
    assert published.generation_id in latest.description
    assert "a red fox in the snow" in latest.data
    assert "manifest.json" in latest.data
    assert published.artifact_keys == ["luma-generate-video"]

    emitted = {e.event: e for e in events()}
    # One event per generation a user acts on: published, with when each step happened.
    published_event = emitted["luma.generation.published"]
    assert published_event.resource.id == f"luma.generation.{published.generation_id}"
    states = [s["state"] for s in published_event.payload["states"]]
    assert {"submitted", "completed", "downloaded", "published"} <= set(states)
    assert "luma.generation.failed" not in emitted
    assert "luma.generation.completed" not in emitted

    record = Ledger(storage_for(str(tmp_path))).get(published.generation_id)
    assert record is not None and record.status == "published"


async def test_a_failed_generation_fails_the_flow_and_emits_failed(
    sim: RelaySimulator, tmp_path: Path, events: Callable[[], list[Any]]
) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="doomed"))

    with pytest.raises(LumaError, match="failed"):
        await generate_video(
            prompt="a doomed prompt",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            **FAST,
        )

    failed = [e for e in events() if e.event == "luma.generation.failed"]
    assert len(failed) == 1
    generation_id = failed[0].resource.id.removeprefix("luma.generation.")
    assert not (tmp_path / generation_id / "video.mp4").exists()
    record = Ledger(storage_for(str(tmp_path))).get(generation_id)
    assert record is not None and record.status == "failed"


async def test_a_timed_out_generation_stays_in_the_ledger_and_collect_pending_finishes_it(
    sim: RelaySimulator, tmp_path: Path, storage_on_loop: list[str]
) -> None:
    with pytest.raises(LumaError, match="did not reach completed"):
        await generate_video(
            prompt="a slow one",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            timeout_seconds=30.0,
            **FAST,
        )
    ledger = Ledger(storage_for(str(tmp_path)))
    (pending,) = ledger.unfinished()
    assert pending.status == "submitted"

    outcomes = await collect_pending(
        credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    assert [(o.generation_id, o.status) for o in outcomes] == [(pending.generation_id, "published")]
    assert (tmp_path / pending.generation_id / "video.mp4").exists()
    assert ledger.unfinished() == []
    assert sim.counters().submits_accepted == 1  # finished, never paid again
    assert storage_on_loop == []


async def test_an_interrupted_download_resumes_with_range(
    make_sim: Callable[..., RelaySimulator],
    drive_waits: Callable[[RelaySimulator], None],
    tmp_path: Path,
) -> None:
    size = 3 * 1024 * 1024
    sim = make_sim(video_bytes=size)
    drive_waits(sim)
    sim.add_fault(
        Fault(FaultKind.DROP_CONNECTION, routes=("media",), after_bytes=size // 2, times=1)
    )

    published = await generate_video(
        prompt="cut mid-way",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        assets=["video"],
        **FAST,
    )

    video = published.downloaded.assets["video"]
    assert video.bytes == size
    assert (tmp_path / published.generation_id / "video.mp4").stat().st_size == size
    # The second request fetched only the rest, not the whole file again.
    assert sim.counters().bytes_served < size * 1.2


async def test_collecting_again_downloads_nothing(sim: RelaySimulator, tmp_path: Path) -> None:
    generation_id = sim.create_generation(prompt="already there", state="completed")
    first = await collect_generations(
        [generation_id], credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )
    served = sim.counters().media_requests_by_generation.get(generation_id, 0)

    second = await collect_generations(
        [generation_id], credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    assert [o.status for o in first + second] == ["published", "published"]
    assert sim.counters().media_requests_by_generation.get(generation_id, 0) == served
    assert all(a.reused for a in second[0].published.downloaded.assets.values())


async def test_collect_reports_each_id_and_a_path_traversal_id_writes_nothing(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    good = sim.create_generation(prompt="fine", state="completed")
    bad = sim.create_generation(prompt="broken", state="processing")
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, generation_id=bad))
    destination = tmp_path / "out"

    state = await collect_generations(
        [good, bad, "../../escape", "0f0f0f0f-0000-4000-8000-000000000000"],
        credentials=sim.credentials(),
        destination=str(destination),
        timeout_seconds=300.0,
        return_state=True,
        **FAST,
    )
    outcomes = await state.result()  # type: ignore[misc]

    assert [o.status for o in outcomes] == ["published", "failed", "error", "not_found"]
    assert "not a valid generation id" in (outcomes[2].error or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not any("escape" in str(p) for p in tmp_path.rglob("*"))
    table = max(await _artifacts("luma-collect-generations", state), key=lambda a: a.created)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["outcome"] for r in rows] == ["published", "failed", "error", "not_found"]


async def test_collect_fails_the_run_only_when_every_id_failed(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    doomed = sim.create_generation(prompt="doomed", state="processing")
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, generation_id=doomed))

    with pytest.raises(LumaError, match="1 of 1 generation"):
        await collect_generations(
            [doomed], credentials=sim.credentials(), destination=str(tmp_path), **FAST
        )


async def test_remote_filesystem_destination(sim: RelaySimulator) -> None:
    destination = RemoteFileSystem(basepath="memory://luma-flow-test")

    published = await generate_video(
        prompt="into memory", credentials=sim.credentials(), destination=destination, **FAST
    )

    fs = fsspec.filesystem("memory")
    folder = f"/luma-flow-test/{published.generation_id}"
    manifest = json.loads(fs.cat(f"{folder}/manifest.json"))
    video = fs.cat(f"{folder}/video.mp4")
    assert hashlib.sha256(video).hexdigest() == manifest["assets"]["video"]["sha256"]


async def test_generate_videos_runs_many_bounded(
    sim: RelaySimulator, tmp_path: Path, storage_on_loop: list[str]
) -> None:
    requests = [GenerationRequest(prompt=f"clip {i}") for i in range(3)]

    outcomes = await generate_videos(
        requests,
        max_concurrent=2,
        credentials=sim.credentials(),
        destination=str(tmp_path),
        **FAST,
    )

    assert [o.status for o in outcomes] == ["published"] * 3
    assert sim.counters().submits_accepted == 3
    assert len({o.generation_id for o in outcomes}) == 3
    assert storage_on_loop == []


async def test_a_retried_run_never_pays_again_after_a_submit_that_broke_off(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    """The submit reaches the relay but the answer is cut: the retried flow run must not
    POST again (it would create a second paid generation); it says what to check instead."""
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("submit",), times=1))

    with pytest.raises(LumaSubmitUncertainError, match="luma-prefect resolve"):
        await generate_video.with_options(retries=1, retry_delay_seconds=0)(
            prompt="cut answer",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            **FAST,
        )

    assert sim.counters().submits_accepted == 1


async def test_one_refused_submit_does_not_abandon_the_rest_of_a_batch(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    sim.add_fault(Fault(FaultKind.ERROR_BODY_200, routes=("submit",), times=1))
    requests = [GenerationRequest(prompt=f"clip {i}") for i in range(3)]

    outcomes = await generate_videos(
        requests,
        max_concurrent=1,
        credentials=sim.credentials(),
        destination=str(tmp_path),
        **FAST,
    )

    assert sorted(o.status for o in outcomes) == ["error", "published", "published"]
    assert sim.counters().submits_accepted == 2


async def test_collect_pending_leaves_a_live_run_its_generation_then_finishes_it(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    """A sweep must not take a generation from under the run still working on it (that
    would fail a healthy run); once that run is over, the sweep finishes it."""
    from prefect import flow
    from prefect.runtime import flow_run

    from luma_prefect import Generation

    destination = str(tmp_path)
    generation_id = sim.create_generation(prompt="still mine", state="completed")

    @flow
    async def owner_still_at_work() -> list[Any]:
        Ledger(storage_for(destination)).record_submitted(
            Generation(id=generation_id, state="pending"),
            key="owner-key",
            request=GenerationRequest(prompt="still mine"),
            flow_run_id=str(flow_run.id),
            relay_base_url=sim.base_url,
            relay_style="generations",
        )
        return await collect_pending(credentials=sim.credentials(), destination=destination, **FAST)

    assert await owner_still_at_work() == []

    outcomes = await collect_pending(credentials=sim.credentials(), destination=destination, **FAST)

    assert [(o.generation_id, o.status) for o in outcomes] == [(generation_id, "published")]
