"""Deliveries that stay one's own and sweeps that survive anything (issue #11, points 4, 6):
live claims are renewed and respected whatever the wait's length, a holder taken over stops
before publishing, part files are per holder, a published file always matches its
manifest, and one generation's failure, whatever it raises, is only its own outcome.

Flow runs on Prefect's embedded API, the simulator over loopback HTTP, fake wait time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.runtime import flow_run

import luma_prefect.flows._batch as batch
import luma_prefect.flows._deliver as delivery
import luma_prefect.tasks._common
from luma_prefect import Generation, GenerationRequest, LumaDownloadError
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.flows import collect_generations, collect_pending, generate_video
from luma_prefect.ledger._records import Ledger
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.storage import storage_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}
TWO_MINUTES = timedelta(minutes=2)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- liveness, not age --------------------------------------------------------------------


async def test_a_wait_older_than_an_hour_is_not_judged_stuck_while_its_run_holds_it(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    destination = str(tmp_path)
    generation_id = sim.create_generation(prompt="a long wait", state="completed")
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)

    @flow
    async def still_waiting_after_two_hours() -> list[Any]:
        # Submitted two hours ago by this (running) flow run, which waits for it still and
        # holds its claim, as generate_video does during its wait.
        Ledger(storage_for(destination), clock=lambda: two_hours_ago).record_submitted(
            Generation(id=generation_id, state="pending"),
            key="long-wait",
            request=GenerationRequest(prompt="a long wait"),
            flow_run_id=str(flow_run.id),
            relay_base_url=sim.base_url,
            relay_style="generations",
        )
        assert Ledger(storage_for(destination)).claim(
            generation_id, str(flow_run.id), stale_after=TWO_MINUTES
        )
        return await collect_pending(credentials=sim.credentials(), destination=destination, **FAST)

    assert await still_waiting_after_two_hours() == []
    assert sim.counters().media_requests_by_generation == {}


async def test_generate_video_holds_a_live_claim_through_a_long_wait(
    make_sim: Callable[..., RelaySimulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim(processing_seconds=3 * 3600.0)  # three hours of fake waiting
    ledger = Ledger(storage_for(str(tmp_path)))
    seen: list[tuple[float, bool, bool]] = []

    async def look(now: float) -> None:
        """Before each sleep of the wait: what a sweep would see of the claim."""
        records = ledger.unfinished()
        if records:
            record = records[0]
            judged = await delivery.left_behind(ledger, record)
            seen.append((now, ledger.claim_live(record.generation_id), judged))

    clock = FakeClock(sim)
    clock.hooks.append(look)
    monkeypatch.setattr(luma_prefect.tasks._common, "wait_clock", clock)

    published = await generate_video(
        prompt="three hours",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        assets=["video"],
        timeout_seconds=4 * 3600.0,
        poll_interval_seconds=60.0,
        max_poll_interval_seconds=600.0,
    )

    assert published.generation_id
    assert max(now for now, _, _ in seen) > 3600.0
    # Every time a sweep could have looked, the claim was live and the record not its to take.
    assert all(live and not judged for _, live, judged in seen), seen
    assert ledger.claim_owner(published.generation_id) is None  # released at the end


async def test_a_holder_taken_over_mid_delivery_stops_and_publishes_nothing(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = str(tmp_path)
    generation_id = sim.create_generation(prompt="taken over", state="completed")
    ledger = Ledger(storage_for(destination))
    downloading = asyncio.Event()

    async def stalls(*args: Any, **kwargs: Any) -> Any:
        downloading.set()
        await asyncio.Event().wait()  # a download that stops making progress

    async def heartbeat(seconds: float) -> None:
        await downloading.wait()
        # Meanwhile (this holder silent past its lease) another sweep took it over.
        assert ledger.claim(generation_id, "other-sweep", stale_after=TWO_MINUTES, force=True)

    monkeypatch.setattr(delivery, "fetch_files", stalls)
    monkeypatch.setattr(delivery, "heartbeat_sleep", heartbeat)

    [outcome] = await asyncio.wait_for(
        collect_generations(
            [generation_id],
            credentials=sim.credentials(),
            destination=destination,
            **FAST,
            fail_when="never",
        ),
        30.0,
    )

    assert outcome.status == "error"
    assert "taken over by another run" in (outcome.error or "")
    assert not (tmp_path / generation_id / "manifest.json").exists()
    assert ledger.claim_owner(generation_id) == "other-sweep"  # not released by the loser


async def test_parts_are_per_holder_so_two_holders_never_write_one_file(
    luma_simulator_factory: Callable[..., RelaySimulator], tmp_path: Path
) -> None:
    size = 400_000
    sim = luma_simulator_factory(video_bytes=size)
    generation_id = sim.create_generation(prompt="two holders", state="completed")
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("media",), after_bytes=100_000))
    storage = storage_for(str(tmp_path))

    credentials = sim.credentials()
    async with credentials.get_client() as client, credentials.get_media_client() as http:
        generation = await client.get_generation(generation_id)
        for holder in ("holderA", "holderB"):
            with pytest.raises(LumaDownloadError):
                await download_generation_files(
                    client,
                    generation,
                    storage,
                    assets=("video",),
                    max_resume_attempts=0,
                    part_tag=holder,
                    http=http,
                )

    parts = sorted(p.name for p in (tmp_path / generation_id).glob("*.part"))
    assert parts == ["video.holderA.part", "video.holderB.part"]
    assert (tmp_path / generation_id / "video.holderA.part").stat().st_size == 100_000


# -- a published file always matches its manifest ----------------------------------------


async def test_a_file_changed_after_download_is_repaired_before_published(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = str(tmp_path)
    generation_id = sim.create_generation(prompt="overwritten", state="completed")
    real_download = delivery.fetch_files
    calls = 0

    async def then_overwritten(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        downloaded = await real_download(*args, **kwargs)
        if calls == 1:
            # A late holder's write lands on the video: same size, other bytes.
            video = Path(downloaded.assets["video"].path)
            video.write_bytes(b"\0" * video.stat().st_size)
        return downloaded

    monkeypatch.setattr(delivery, "fetch_files", then_overwritten)

    [outcome] = await collect_generations(
        [generation_id],
        credentials=sim.credentials(),
        destination=destination,
        assets=["video"],
        **FAST,
    )

    assert outcome.status == "published"
    manifest = json.loads((tmp_path / generation_id / "manifest.json").read_text())
    video = tmp_path / generation_id / manifest["assets"]["video"]["file"]
    assert _sha256(video) == manifest["assets"]["video"]["sha256"]
    assert video.stat().st_size == manifest["assets"]["video"]["bytes"]
    assert calls == 2


# -- one bad generation never sinks a sweep -----------------------------------------------


@pytest.mark.parametrize(
    "raised",
    [RecursionError("maximum recursion depth exceeded"), RuntimeError("anything at all")],
    ids=["RecursionError", "RuntimeError"],
)
async def test_whatever_one_generation_raises_the_others_are_published(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: Exception
) -> None:
    destination = str(tmp_path)
    ids = [sim.create_generation(prompt=f"video {i}", state="completed") for i in range(3)]
    bad = ids[1]
    real_download = delivery.fetch_files

    async def one_breaks(block: Any, generation: Generation, *args: Any, **kwargs: Any) -> Any:
        if generation.id == bad:
            raise raised
        return await real_download(block, generation, *args, **kwargs)

    monkeypatch.setattr(delivery, "fetch_files", one_breaks)
    records: list[str] = []
    monkeypatch.setattr(
        batch,
        "create_batch_table",
        lambda rows, key: _keep(records, rows),
    )

    outcomes = await collect_generations(
        ids,
        credentials=sim.credentials(),
        destination=destination,
        assets=["video"],
        fail_when="never",
        **FAST,
    )

    assert [o.status for o in outcomes] == ["published", "error", "published"]
    assert type(raised).__name__ in (outcomes[1].error or "")
    assert bad in (outcomes[1].error or "")
    assert [r for r in records if bad in r and type(raised).__name__ in r]


async def _keep(records: list[str], rows: list[dict[str, Any]]) -> None:
    records.extend(json.dumps(row) for row in rows)


async def test_files_that_keep_changing_are_never_published_nor_described(
    sim: RelaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    events: Callable[[], list[Any]],
) -> None:
    destination = str(tmp_path)
    generation_id = sim.create_generation(prompt="always overwritten", state="completed")
    real_download = delivery.fetch_files

    async def always_overwritten(*args: Any, **kwargs: Any) -> Any:
        downloaded = await real_download(*args, **kwargs)
        video = Path(downloaded.assets["video"].path)
        video.write_bytes(b"\0" * video.stat().st_size)
        return downloaded

    monkeypatch.setattr(delivery, "fetch_files", always_overwritten)

    [outcome] = await collect_generations(
        [generation_id],
        credentials=sim.credentials(),
        destination=destination,
        assets=["video"],
        fail_when="never",
        **FAST,
    )

    assert outcome.status == "error"
    assert "kept differing from its manifest" in (outcome.error or "")
    assert not (tmp_path / generation_id / "manifest.json").exists()
    # Automations act on `published`: none may be sent for a manifest that was taken back.
    assert "luma.generation.published" not in {e.event for e in events()}
