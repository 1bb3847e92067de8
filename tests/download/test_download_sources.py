"""Which link each file comes from, the folder layout, names, sizes and hashes."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from luma_prefect import Generation, LumaClient, LumaDownloadError
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator._media import media_file, synthetic_bytes
from luma_prefect.storage import storage_for

from .conftest import MIB, tree


async def test_layout_sizes_and_hashes(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    done = await download_generation_files(client, generation, storage_for(dest), http=http)

    gid = generation.id
    assert tree(dest) == [
        f"{gid}/.download.json",
        f"{gid}/last_frame.jpg",
        f"{gid}/thumbnail.jpg",
        f"{gid}/video.mp4",
    ]
    expected = {
        "video": synthetic_bytes(0, 3 * MIB),
        "thumbnail": media_file("thumbnail.jpg")[0],
        "last_frame": media_file("last_frame.jpg")[0],
    }
    for name, body in expected.items():
        asset = done.assets[name]
        assert Path(asset.path).read_bytes() == body
        assert asset.bytes == len(body)
        assert asset.sha256 == hashlib.sha256(body).hexdigest()
        assert not asset.reused
    assert done.assets["video"].content_type == "video/mp4"
    assert done.assets["thumbnail"].content_type == "image/jpeg"
    assert done.folder == str(dest.resolve() / gid)
    assert done.destination == str(dest.resolve())
    record = json.loads((dest / gid / ".download.json").read_text())
    assert record["assets"]["video"]["sha256"] == done.assets["video"].sha256
    assert record["assets"]["thumbnail"]["file_name"] == "thumbnail.jpg"


async def test_video_raw_is_preferred_and_links_lose_their_secrets(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    done = await download_generation_files(client, generation, storage_for(dest), http=http)

    video = done.assets["video"]
    assert video.source_kind == "video_raw"
    assert video.source_url == f"{sim.base_url}/cdn/{generation.id}/video_raw.mp4"
    assert (video.width, video.height, video.duration) == (1360, 752, pytest.approx(5.04, 0.01))
    assert all("sig=" not in a.source_url for a in done.assets.values())
    assert sim.counters().requests.get("download_url", 0) == 0


async def test_download_url_when_there_is_no_video_raw(
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[[RelaySimulator], LumaClient],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    sim = sim_factory(with_video_raw=False)
    client = client_for(sim)
    generation = await client.get_generation(sim.create_generation(prompt="fox"))
    assert generation.video_raw is None and generation.video and generation.video.download_url

    done = await download_generation_files(client, generation, storage_for(dest), http=http)

    assert done.assets["video"].source_kind == "download_url"
    assert sim.counters().requests.get("download_url", 0) == 0


async def test_relay_route_asked_once_when_the_object_has_no_watermark_free_link(
    sim: RelaySimulator, client: LumaClient, dest: Path, http: httpx.AsyncClient
) -> None:
    gid = sim.create_generation(prompt="fox")
    sim.add_fault(Fault(FaultKind.NO_DOWNLOAD_URL, generation_id=gid))
    generation = await client.get_generation(gid)
    assert generation.video_raw is None and generation.video and not generation.video.download_url

    done = await download_generation_files(client, generation, storage_for(dest), http=http)

    assert done.assets["video"].source_kind == "download_url"
    assert done.assets["video"].source_url.endswith("/video_raw.mp4")
    assert sim.counters().requests["download_url"] == 1


async def test_watermarked_url_when_it_is_the_only_source_allowed(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    done = await download_generation_files(
        client, generation, storage_for(dest), video_sources=("url",), assets=("video",), http=http
    )

    assert done.assets["video"].source_kind == "url"
    assert done.assets["video"].source_url.endswith("/video.mp4")
    assert list(done.assets) == ["video"]
    assert tree(dest) == [f"{generation.id}/.download.json", f"{generation.id}/video.mp4"]


async def test_no_video_link_at_all_asks_the_relay_once(
    sim: RelaySimulator, client: LumaClient, dest: Path, http: httpx.AsyncClient
) -> None:
    gid = sim.create_generation(prompt="fox")
    bare = Generation(id=gid, state="completed")

    done = await download_generation_files(
        client, bare, storage_for(dest), assets=("video",), http=http
    )

    assert done.assets["video"].source_kind == "download_url"
    assert sim.counters().requests["download_url"] == 1


async def test_official_style_without_last_frame_skips_it_with_a_warning(
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[[RelaySimulator], LumaClient],
    dest: Path,
    caplog: pytest.LogCaptureFixture,
    http: httpx.AsyncClient,
) -> None:
    sim = sim_factory(style="official")
    client = client_for(sim)
    generation = await client.get_generation(sim.create_generation(prompt="fox"))

    with caplog.at_level(logging.WARNING, logger="luma_prefect.download"):
        done = await download_generation_files(client, generation, storage_for(dest), http=http)

    assert sorted(done.assets) == ["thumbnail", "video"]
    assert done.assets["video"].source_kind == "url"
    assert "has no last_frame: skipped" in caplog.text


async def test_task_style_takes_the_thumbnail_from_inside_the_video(
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[[RelaySimulator], LumaClient],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    sim = sim_factory(style="task")
    client = client_for(sim)
    generation = await client.get_generation(sim.create_generation(prompt="fox"))

    done = await download_generation_files(client, generation, storage_for(dest), http=http)

    assert done.assets["thumbnail"].bytes == len(media_file("thumbnail.jpg")[0])
    assert done.assets["video"].source_kind == "download_url"  # asked: the task style has none


async def test_a_generation_with_no_allowed_video_source_fails_clearly(
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[[RelaySimulator], LumaClient],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    sim = sim_factory(style="official")
    client = client_for(sim)
    generation = await client.get_generation(sim.create_generation(prompt="fox"))

    with pytest.raises(LumaDownloadError, match="no video link among the allowed sources") as info:
        await download_generation_files(
            client, generation, storage_for(dest), video_sources=("video_raw",), http=http
        )
    assert info.value.generation_id == generation.id
    # The other files were fetched and recorded all the same: a rerun will reuse them.
    assert not (dest / generation.id / "video.mp4").exists()
    assert (dest / generation.id / "thumbnail.jpg").exists()


async def test_unfinished_and_failed_generations_are_refused(
    client: LumaClient, dest: Path, http: httpx.AsyncClient
) -> None:
    for state, words in (("processing", "not completed"), ("failed", "nothing to download")):
        generation = Generation(id="abc", state=state)
        with pytest.raises(LumaDownloadError, match=words):
            await download_generation_files(client, generation, storage_for(dest), http=http)
    assert not dest.exists()


async def test_progress_is_reported_a_few_times_and_at_the_end(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    calls: list[tuple[str, int, int | None]] = []

    async def on_progress(name: str, done: int, total: int | None) -> None:
        calls.append((name, done, total))

    await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), on_progress=on_progress, http=http
    )

    assert calls[-1] == ("video", 3 * MIB, 3 * MIB)
    assert len(calls) <= 5  # throttled: a 3 MiB download takes well under a second


async def test_a_failing_progress_callback_does_not_break_the_download(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    def on_progress(name: str, done: int, total: int | None) -> None:
        raise RuntimeError("display broken")

    done = await download_generation_files(
        client, await completed(), storage_for(dest), on_progress=on_progress, http=http
    )
    assert done.assets["video"].bytes == 3 * MIB


async def test_unknown_asset_names_are_refused(
    client: LumaClient, dest: Path, http: httpx.AsyncClient
) -> None:
    generation = Generation(id="abc", state="completed")
    with pytest.raises(ValueError, match="Unknown assets"):
        await download_generation_files(
            client, generation, storage_for(dest), assets=("audio",), http=http
        )
    with pytest.raises(ValueError, match="not a string"):
        await download_generation_files(
            client, generation, storage_for(dest), assets="video", http=http
        )
