"""What a user sees in the Prefect UI (issue #14): artifacts that last, progress, names,
tags and forms. Flow runs against the simulator on loopback, on Prefect's embedded API."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
)
from prefect.states import State
from prefect.utilities.callables import parameter_schema

from luma_prefect import GenerationOutcome, GenerationRequest, LumaError
from luma_prefect.flows import generate_video, generate_videos
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.tasks._progress import (
    BATCH_CHANGE_EVERY_SECONDS,
    UPDATE_EVERY_SECONDS,
    BatchProgress,
    WaitProgress,
)
from luma_prefect.wait._engine import WaitRound

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}
_IMAGE = re.compile(r"!\[thumbnail\]\(([^)]*)\)")


async def _artifacts(key: str, state: State[Any]) -> list[Any]:
    """The versions of artifact `key` made by the flow run of `state`, oldest first (other
    runs on the same API make versions of the same key)."""
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    return sorted(found, key=lambda a: a.created)


async def _run_artifacts(flow_run_id: UUID) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


async def _flow_run(name: str) -> Any:
    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return run


# -- artifacts that last ------------------------------------------------------------------


async def test_the_thumbnail_still_shows_after_the_relays_link_expired(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    state = await generate_video(
        prompt="a heron over a still lake",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        return_state=True,
        **FAST,
    )
    published = await state.result()  # type: ignore[misc]
    relay_link = published.downloaded.generation.thumbnail
    assert relay_link is not None and relay_link.url
    assert httpx.get(relay_link.url).status_code == 200

    sim.add_fault(Fault(FaultKind.EXPIRED_LINK))  # every link handed out so far expires

    assert httpx.get(relay_link.url).status_code == 403
    artifact = (await _artifacts("luma-generate-video", state))[-1]
    assert published.generation_id in artifact.description
    (src,) = _IMAGE.findall(artifact.data)
    # The image is our own copy, inlined: it loads as long as the artifact exists.
    assert src.startswith("data:image/jpeg;base64,")
    image = base64.b64decode(src.split(",", 1)[1], validate=True)
    thumbnail = tmp_path / published.generation_id / "thumbnail.jpg"
    assert image == thumbnail.read_bytes()
    # A whole JPEG a browser draws: its frame header gives a size, its end marker is there
    # (`make ui-check` shows the same artifact loading in Chromium).
    width, height = _jpeg_size(image)
    assert width > 0 and height > 0
    assert sim.base_url not in artifact.data  # no relay link anywhere in the artifact


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's frame header (SOFn); AssertionError if not a whole JPEG."""
    assert data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
    at = 2
    while at + 4 <= len(data):
        assert data[at] == 0xFF, f"no JPEG marker at byte {at}"
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            return width, height
        at += 2 + length
    raise AssertionError("no JPEG frame header")


async def test_files_are_named_where_they_are_not_linked_to_nowhere(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    state = await generate_video(
        prompt="a lighthouse at dusk",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        return_state=True,
        **FAST,
    )
    published = await state.result()  # type: ignore[misc]
    artifact = (await _artifacts("luma-generate-video", state))[-1]
    assert published.generation_id in artifact.description
    # A local path is plain text (escaped), never a link the browser cannot open.
    assert "](/" not in artifact.data and "](file:" not in artifact.data
    assert "video.mp4" in artifact.data


async def test_a_failed_generation_leaves_an_artifact_with_the_reason_and_next_step(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="doomed"))

    state = await generate_video(
        prompt="a doomed <b>prompt</b>",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        return_state=True,
        **FAST,
    )
    with pytest.raises(LumaError):
        await state.result()  # type: ignore[misc]

    artifact = (await _artifacts("luma-generate-video", state))[-1]
    assert "failed" in artifact.description
    assert "What to do next" in artifact.data
    assert artifact.data.count("refund") == 1  # said once, in the next step
    assert "<b>" not in artifact.data  # the relay's words stay escaped


async def test_a_timed_out_generation_says_it_is_paid_and_how_to_collect_it(
    make_sim: Any, drive_waits: Any, tmp_path: Path
) -> None:
    sim = make_sim(processing_seconds=3600.0)
    drive_waits(sim)

    state = await generate_video(
        prompt="a slow glacier",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        timeout_seconds=60.0,
        return_state=True,
        **FAST,
    )
    with pytest.raises(LumaError):
        await state.result()  # type: ignore[misc]

    artifact = (await _artifacts("luma-generate-video", state))[-1]
    assert "timed out" in artifact.description
    assert "do not start this run again" in artifact.data
    assert "luma-prefect collect" in artifact.data


# -- progress, names, tags ----------------------------------------------------------------


async def test_a_run_shows_progress_short_names_and_relay_tags(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    published = await generate_video(
        prompt="a red kite circling over green hills at noon",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        **FAST,
    )
    short = published.generation_id[:8]
    run = await _flow_run("a red kite circling over green…")
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    names = {t.name for t in task_runs}
    # The download and the publish are one task run (#12: fewer Prefect objects).
    assert names == {"submit a red kite circling…", f"wait {short}", f"deliver {short}"}
    relay_tag = f"luma-relay:127.0.0.1:{sim.base_url.rsplit(':', 1)[1]}"
    for task_run in task_runs:
        assert {"luma", relay_tag} <= set(task_run.tags), task_run.name

    progress = [a for a in await _run_artifacts(run.id) if a.type == "progress"]
    assert sorted(a.description.split(" ")[0] for a in progress) == ["Download", "Generation"]
    assert all(a.data == 100.0 for a in progress)
    wait = next(a for a in progress if a.description.startswith("Generation"))
    assert "completed after" in wait.description


async def test_a_batch_shows_done_of_total(sim: RelaySimulator, tmp_path: Path) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="doomed"))
    requests = [GenerationRequest(prompt=p) for p in ("a cat", "a dog", "a doomed cow")]

    outcomes = await generate_videos(
        requests,
        credentials=sim.credentials(),
        destination=str(tmp_path),
        fail_when="never",
        **FAST,
    )

    assert sorted(o.status for o in outcomes) == ["failed", "published", "published"]
    run = await _flow_run("3 videos: a cat")
    artifacts = await _run_artifacts(run.id)
    (batch,) = [
        a for a in artifacts if a.type == "progress" and "generations done" in a.description
    ]
    assert batch.data == 100.0
    assert batch.description.startswith("3 of 3 generations done")
    assert "1 failed" in batch.description and "2 published" in batch.description
    failures = [a for a in artifacts if a.type == "markdown" and "What to do next" in a.data]
    assert len(failures) == 1 and "a doomed cow" in failures[0].data


async def test_progress_updates_are_bounded_while_nothing_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefect.artifacts

    now = [0.0]
    updates: list[str] = []

    async def update(artifact_id: UUID, progress: float, description: str) -> UUID:
        updates.append(description)
        return artifact_id

    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    progress = WaitProgress(["4665a07c-7641-4809-a133-10786201bb56"], lambda: now[0])
    progress.display.artifact_id = UUID(int=1)  # as if created at t=0
    for second in range(1, 121):  # two minutes of polls a second apart
        now[0] = float(second)
        changed = second in (1, 50)  # two state changes
        await progress.round(WaitRound(second, 1, 0, changed, {"processing": 1}, None, None))

    # Each change at once; else one update per UPDATE_EVERY_SECONDS (t = 1, 11, ... 41,
    # 50, 60, ... 120): 13 updates for 120 polls.
    assert UPDATE_EVERY_SECONDS == 10.0
    assert len(updates) == 13
    assert "waited 2 min 0 s" in updates[-1]


async def test_a_batch_wait_updates_its_artifact_at_most_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's wait sees a change in nearly every round: one update per
    BATCH_CHANGE_EVERY_SECONDS then, not one per round (events per generation, #12)."""
    import prefect.artifacts

    now = [0.0]
    updates: list[str] = []

    async def update(artifact_id: UUID, progress: float, description: str) -> UUID:
        updates.append(description)
        return artifact_id

    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    progress = WaitProgress([], lambda: now[0], expected=500)
    progress.display.artifact_id = UUID(int=1)  # as if created at t=0
    for second in range(1, 121):  # two minutes of rounds a second apart, each a change
        now[0] = float(second)
        await progress.round(WaitRound(second, 500, second, True, {"processing": 9}, None, None))

    assert BATCH_CHANGE_EVERY_SECONDS == 5.0
    assert len(updates) == 24  # t = 5, 10, ... 120
    assert updates[-1].startswith("120 of 500 generations settled")


async def test_generations_ending_together_make_one_update_of_the_batch_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deliveries that end while an update is in flight all found the display due: 0.5
    updates per generation in bench_orchestration, against one per 10 s."""
    import prefect.artifacts

    now = [100.0]
    updates: list[str] = []
    gate = asyncio.Event()

    async def update(artifact_id: UUID, progress: float, description: str) -> UUID:
        updates.append(description)
        await gate.wait()  # the API answers after every delivery has ended
        return artifact_id

    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    progress = BatchProgress(50, lambda: now[0])
    progress.display.artifact_id = UUID(int=1)  # as if created at t=0: an update is due
    outcome = GenerationOutcome(generation_id="g", status="published")
    adds = [asyncio.ensure_future(progress.add(outcome)) for _ in range(50)]
    await asyncio.sleep(0)  # every add ran up to its first await
    gate.set()
    await asyncio.gather(*adds)

    assert len(updates) == 1
    assert sum(progress.counts.values()) == 50


async def test_a_batch_wait_counts_the_generations_not_submitted_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids join a batch's wait as their submits return: the text counts the whole batch."""
    import prefect.artifacts

    updates: list[tuple[float, str]] = []

    async def update(artifact_id: UUID, progress: float, description: str) -> UUID:
        updates.append((progress, description))
        return artifact_id

    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    progress = WaitProgress([], lambda: 5.0, expected=3)
    progress.display.artifact_id = UUID(int=1)
    await progress.round(WaitRound(5.0, 1, 0, True, {"pending": 1}, None, None))

    share, text = updates[-1]
    assert share == 0.0
    assert text.startswith("0 of 3 generations settled; waiting: 1 pending, 2 not submitted")


# -- forms --------------------------------------------------------------------------------


def test_the_run_form_offers_text_and_known_values_not_none_toggles() -> None:
    schema = parameter_schema(generate_video).model_dump_for_openapi()
    fields = schema["properties"]
    assert fields["prompt"]["type"] == "string" and fields["prompt"]["default"] == ""
    assert "relay" in fields["model"]["description"]
    for name, known in (("model", "ray-v2"), ("resolution", "1080p"), ("duration", "5s")):
        choices = fields[name]["anyOf"]
        assert [c["title"] for c in choices] == ["known values", "other value"]
        assert known in choices[0]["enum"] and "" in choices[0]["enum"]
        assert fields[name]["default"] == ""
    for name in ("prompt", "image_url", "model", "resolution", "duration", "idempotency_key"):
        assert "null" not in str(fields[name]), name
    # The items of generate-videos start as an empty text prompt, not None.
    item = parameter_schema(generate_videos).model_dump_for_openapi()["definitions"][
        "GenerationRequest"
    ]["properties"]
    assert item["prompt"] == {**item["prompt"], "type": "string", "default": ""}
    assert item["model"]["default"] == ""


async def test_python_callers_may_still_pass_none_and_the_form_may_send_empty_strings(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    request = GenerationRequest(prompt="a fox", model="", resolution="", duration="")
    assert request == GenerationRequest(prompt="a fox", model=None)
    assert request.to_wire("generations") == {"user_prompt": "a fox", "aspect_ratio": "16:9"}
    published = await generate_video(
        prompt="a fox",
        model=None,
        image_url=None,
        credentials=sim.credentials(),
        destination=str(tmp_path),
        **FAST,
    )
    assert published.downloaded.generation.prompt == "a fox"


async def test_a_batch_download_gets_its_own_progress_only_when_it_takes_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefect.artifacts

    from luma_prefect.tasks._progress import DownloadProgress

    now = [0.0]
    created: list[str] = []

    async def create(progress: float, description: str) -> UUID:
        created.append(description)
        return UUID(int=len(created))

    monkeypatch.setattr(prefect.artifacts, "acreate_progress_artifact", create)
    quick = DownloadProgress(
        "4665a07c-7641-4809-a133-10786201bb56", lambda: now[0], after_seconds=30
    )
    await quick.start()
    now[0] = 2.0
    await quick.bytes("video", 8_000, 8_000)
    await quick.finish(1, 8_000)
    assert created == []  # a quick download: nothing but the batch's own progress

    slow = DownloadProgress(
        "5665a07c-7641-4809-a133-10786201bb56", lambda: now[0], after_seconds=30
    )
    await slow.start()
    for second in range(3, 40):
        now[0] = float(second)
        await slow.bytes("video", second * 1_000_000, 100_000_000)
    assert created == ["Download of generation 5665a07c: started 30 s ago."]
