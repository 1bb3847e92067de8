"""Reruns reuse verified files; broken-off transfers resume with Range, not from zero."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from luma_prefect import Generation, LumaClient, LumaDownloadError, VideoAsset
from luma_prefect._urls import public_url
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator._media import synthetic_bytes
from luma_prefect.storage import storage_for

from .conftest import MIB, eventually, tree

SIZE = 3 * MIB


def drop(after_bytes: int, times: int | None = 1) -> Fault:
    return Fault(FaultKind.DROP_CONNECTION, routes=("media",), after_bytes=after_bytes, times=times)


async def test_rerun_reuses_verified_files_without_any_media_request(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    first = await download_generation_files(client, generation, storage_for(dest), http=http)
    sim.reset_counters()

    again = await download_generation_files(client, generation, storage_for(dest), http=http)

    counters = sim.counters()
    assert counters.media_requests_by_generation == {}
    assert counters.bytes_served == 0
    assert counters.requests == {}  # nor any relay call
    assert all(asset.reused for asset in again.assets.values())
    for name, asset in again.assets.items():
        assert (asset.path, asset.sha256, asset.bytes) == (
            first.assets[name].path,
            first.assets[name].sha256,
            first.assets[name].bytes,
        )
        assert asset.source_kind == first.assets[name].source_kind


async def test_a_changed_file_is_fetched_again_and_only_that_one(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    first = await download_generation_files(client, generation, storage_for(dest), http=http)
    thumbnail = Path(first.assets["thumbnail"].path)
    original = thumbnail.read_bytes()
    thumbnail.write_bytes(b"X" * len(original))  # same size, other bytes
    sim.reset_counters()

    again = await download_generation_files(client, generation, storage_for(dest), http=http)

    assert sim.counters().media_requests_by_generation == {generation.id: 1}
    assert not again.assets["thumbnail"].reused
    assert again.assets["video"].reused and again.assets["last_frame"].reused
    assert thumbnail.read_bytes() == original


async def test_a_broken_off_download_resumes_where_it_stopped(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(drop(after_bytes=MIB + 12345))

    done = await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), http=http
    )

    counters = sim.counters()
    assert counters.faults_fired == {"drop_connection": 1}
    assert counters.media_requests_by_generation == {generation.id: 2}
    # Resumed with Range: about the file once, not once and a half.
    assert SIZE <= counters.bytes_served <= SIZE + 64 * 1024
    assert done.assets["video"].sha256 == hashlib.sha256(synthetic_bytes(0, SIZE)).hexdigest()
    assert Path(done.assets["video"].path).read_bytes() == synthetic_bytes(0, SIZE)
    assert tree(dest) == [f"{generation.id}/.download.json", f"{generation.id}/video.mp4"]


async def test_a_part_left_by_a_crashed_run_is_resumed(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(drop(after_bytes=MIB + 500))
    with pytest.raises(LumaDownloadError, match="partial file is kept"):
        await download_generation_files(
            client,
            generation,
            storage_for(dest),
            assets=("video",),
            max_resume_attempts=0,
            http=http,
        )
    part = dest / generation.id / "video.part"
    kept = part.stat().st_size
    assert 0 < kept < SIZE
    assert not (dest / generation.id / "video.mp4").exists()
    sim.reset_counters()

    done = await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), http=http
    )

    assert sim.counters().bytes_served == SIZE - kept
    assert Path(done.assets["video"].path).read_bytes() == synthetic_bytes(0, SIZE)
    assert done.assets["video"].sha256 == hashlib.sha256(synthetic_bytes(0, SIZE)).hexdigest()
    assert not part.exists() and not part.with_name("video.part.json").exists()


async def test_a_cancelled_download_keeps_exactly_what_it_wrote_and_resumes_from_there(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()

    def cancel_once_started(name: str, done: int, total: int | None) -> None:
        if done:  # a batch is written
            asyncio.current_task().cancel()  # type: ignore[union-attr]

    download = asyncio.ensure_future(
        download_generation_files(
            client,
            generation,
            storage_for(dest),
            assets=("video",),
            on_progress=cancel_once_started,
            http=http,
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await download
    part = dest / generation.id / "video.part"
    kept = part.stat().st_size
    assert 0 < kept < SIZE
    assert part.read_bytes() == synthetic_bytes(0, kept)  # every write finished, none torn
    # The cancelled answer's stream stops only once the simulator sees the connection gone:
    # a cut after the first 64 KiB batch leaves most of it to count after a reset.
    await eventually(lambda: sim.idle, "the cancelled answer ended")
    sim.reset_counters()

    done = await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), http=http
    )

    assert sim.counters().bytes_served == SIZE - kept
    assert done.assets["video"].sha256 == hashlib.sha256(synthetic_bytes(0, SIZE)).hexdigest()


async def test_a_part_from_another_link_is_not_appended_to(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    folder = dest / generation.id
    folder.mkdir(parents=True)
    (folder / "video.part").write_bytes(b"watermarked bytes")
    meta = {"kind": "url", "url": "http://elsewhere/video.mp4"}
    (folder / "video.part.json").write_text(json.dumps(meta))

    done = await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), http=http
    )

    assert sim.counters().bytes_served == SIZE
    assert Path(done.assets["video"].path).read_bytes() == synthetic_bytes(0, SIZE)


async def test_a_whole_part_is_committed_without_fetching_it_again(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    # A crash between the last byte and the rename: the server answers the Range with 416.
    generation = await completed()
    assert generation.video_raw and generation.video_raw.url
    folder = dest / generation.id
    folder.mkdir(parents=True)
    (folder / "video.part").write_bytes(synthetic_bytes(0, SIZE))
    meta = {"kind": "video_raw", "url": public_url(generation.video_raw.url)}
    (folder / "video.part.json").write_text(json.dumps({**meta, "content_type": "video/mp4"}))

    done = await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), http=http
    )

    assert sim.counters().bytes_served == 0
    assert done.assets["video"].bytes == SIZE
    assert done.assets["video"].sha256 == hashlib.sha256(synthetic_bytes(0, SIZE)).hexdigest()


async def test_resume_attempts_run_out_with_a_clear_error(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(drop(after_bytes=100_000, times=None))

    with pytest.raises(LumaDownloadError) as info:
        await download_generation_files(
            client,
            generation,
            storage_for(dest),
            assets=("video",),
            max_resume_attempts=2,
            http=http,
        )

    message = str(info.value)
    assert "video of generation" in message and generation.id in message
    assert "broke off 3 times" in message and "run again" in message
    assert sim.counters().media_requests_by_generation == {generation.id: 3}
    part = dest / generation.id / "video.part"
    assert part.stat().st_size == 300_000  # what each attempt received is kept
    assert part.read_bytes() == synthetic_bytes(0, 300_000)


async def test_a_transient_cdn_error_is_retried(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    monkeypatch: pytest.MonkeyPatch,
    http: httpx.AsyncClient,
) -> None:
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    generation = await completed()
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, routes=("media",), status=503, times=1))

    # The retry pause is the relay client's RetryPolicy, slept through its injected sleep.
    async with sim.credentials().get_client(sleep=no_sleep) as quiet:
        done = await download_generation_files(
            quiet, generation, storage_for(dest), assets=("video",), http=http
        )

    assert done.assets["video"].bytes == SIZE
    assert sim.counters().media_requests_by_generation == {generation.id: 2}
    assert len(slept) == 1 and 0.375 <= slept[0] <= 0.625  # RetryPolicy's first delay


class _BreaksOff(httpx.AsyncByteStream):
    def __init__(self, body: bytes, cut: int) -> None:
        self.body, self.cut = body, cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body[: self.cut]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def test_a_server_that_ignores_range_makes_the_download_start_over(
    client: LumaClient, dest: Path, http: httpx.AsyncClient
) -> None:
    body = bytes(range(256)) * 40
    url = "https://cdn.example/v/video.mp4?X-Amz-Signature=secret"
    seen_ranges: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen_ranges.append(request.headers.get("range"))
        headers = {"content-type": "video/mp4", "content-length": str(len(body))}
        if len(seen_ranges) == 1:
            return httpx.Response(200, headers=headers, stream=_BreaksOff(body, 4000))
        return httpx.Response(200, headers=headers, content=body)  # Range ignored

    generation = Generation(id="gen-1", state="completed", video=VideoAsset(url=url))
    with respx.mock(assert_all_mocked=True) as router:
        router.get(url).mock(side_effect=answer)
        done = await download_generation_files(
            client,
            generation,
            storage_for(dest),
            video_sources=("url",),
            assets=("video",),
            http=http,
        )

    assert seen_ranges == [None, "bytes=4000-"]
    assert (dest / "gen-1" / "video.mp4").read_bytes() == body
    assert done.assets["video"].sha256 == hashlib.sha256(body).hexdigest()
    assert done.assets["video"].source_url == "https://cdn.example/v/video.mp4"
