"""Expired links, size caps, bad links and ids, full disks, and the relay key kept home."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from luma_prefect import (
    Generation,
    ImageAsset,
    LumaClient,
    LumaConfigurationError,
    LumaDownloadError,
    VideoAsset,
)
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.storage import _part, storage_for

from .conftest import MIB, tree

SECRET = "sk-SECRET-never-on-a-cdn"


async def test_an_expired_link_is_refreshed_once_then_downloaded(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(Fault(FaultKind.EXPIRED_LINK, generation_id=generation.id, times=1))
    sim.reset_counters()

    done = await download_generation_files(client, generation, storage_for(dest), http=http)

    counters = sim.counters()
    assert counters.queries_by_generation == {generation.id: 1}  # one re-query, shared
    assert sorted(done.assets) == ["last_frame", "thumbnail", "video"]
    assert done.assets["video"].bytes == 3 * MIB
    assert counters.faults_fired == {"expired_link": 1}


async def test_links_expired_for_good_are_replaced_by_the_fresh_ones_of_a_re_query(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    # Every link handed out before this fault now answers 403; a re-query signs new ones.
    sim.add_fault(Fault(FaultKind.EXPIRED_LINK, generation_id=generation.id))
    sim.reset_counters()

    done = await download_generation_files(client, generation, storage_for(dest), http=http)

    assert sim.counters().queries_by_generation == {generation.id: 1}
    assert sorted(done.assets) == ["last_frame", "thumbnail", "video"]
    assert done.generation.video_raw and generation.video_raw
    assert done.generation.video_raw.url != generation.video_raw.url


async def test_a_link_that_stays_refused_fails_with_what_to_do(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, routes=("media",), status=403))
    sim.reset_counters()

    with pytest.raises(LumaDownloadError) as info:
        await download_generation_files(
            client, generation, storage_for(dest), assets=("video",), http=http
        )

    message = str(info.value)
    assert generation.id in message and "video" in message and "HTTP 403" in message
    assert "expire" in message and "resubmit" in message
    assert info.value.generation_id == generation.id
    assert sim.counters().queries_by_generation == {generation.id: 1}
    assert not (dest / generation.id / "video.mp4").exists()


async def test_an_announced_size_over_the_cap_is_refused(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()

    with pytest.raises(LumaDownloadError, match="announces 3145728 bytes, over the limit"):
        await download_generation_files(
            client, generation, storage_for(dest), assets=("video",), max_bytes=MIB, http=http
        )

    assert tree(dest) == []  # no part, no file


class _Endless(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"\0" * 65536


async def test_a_body_growing_past_the_cap_is_cut_off(
    client: LumaClient, dest: Path, http: httpx.AsyncClient
) -> None:
    url = "https://cdn.example/big.mp4"
    generation = Generation(id="gen-big", state="completed", video=VideoAsset(url=url))
    with respx.mock() as router:
        router.get(url).mock(return_value=httpx.Response(200, stream=_Endless()))
        with pytest.raises(LumaDownloadError, match="grew past 1048576 bytes"):
            await download_generation_files(
                client,
                generation,
                storage_for(dest),
                assets=("video",),
                video_sources=("url",),
                max_bytes=MIB,
                http=http,
            )
    assert tree(dest) == []


@pytest.mark.parametrize(
    "url", ["ftp://cdn.example/v.mp4", "file:///etc/passwd", "data:video/mp4;base64,AAAA"]
)
async def test_links_that_are_not_http_are_refused(
    client: LumaClient, dest: Path, url: str, http: httpx.AsyncClient
) -> None:
    generation = Generation(id="gen-1", state="completed", video=VideoAsset(url=url))
    with pytest.raises(LumaDownloadError, match="not an http"):
        await download_generation_files(
            client,
            generation,
            storage_for(dest),
            assets=("video",),
            video_sources=("url",),
            http=http,
        )
    assert tree(dest) == [] if dest.exists() else True


@pytest.mark.parametrize("bad_id", ["../escape", "a/../../b", "/etc", "..", "x/y"])
async def test_an_unsafe_generation_id_is_refused_before_anything_is_written(
    client: LumaClient, tmp_path: Path, bad_id: str, http: httpx.AsyncClient
) -> None:
    before = tree(tmp_path)
    fields = {"state": "completed", "video": VideoAsset(url="https://cdn.example/v.mp4")}
    with pytest.raises(ValidationError, match="not a valid generation id"):
        Generation(id=bad_id, **fields)
    # Forced past the model's check, the id is still refused by the storage's path check.
    forced = Generation.model_construct(id=bad_id, **fields)
    with respx.mock() as router:  # any request at all would fail the test
        with pytest.raises(LumaConfigurationError):
            await download_generation_files(
                client, forced, storage_for(tmp_path / "out"), http=http
            )
        assert not router.calls
    assert tree(tmp_path) == before


async def test_a_full_disk_removes_the_partial_file(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    monkeypatch: pytest.MonkeyPatch,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    written: list[int] = []
    refused: list[int] = []

    def full_disk(file: Any, data: bytes) -> None:
        if written:
            refused.append(len(data))
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        real_write(file, data)

    real_write = _part._write_chunk

    monkeypatch.setattr(_part, "_write_chunk", full_disk)

    with pytest.raises(LumaDownloadError, match="disk is full") as info:
        await download_generation_files(
            client, generation, storage_for(dest), assets=("video",), http=http
        )

    assert info.value.generation_id == generation.id
    assert written  # it failed mid-file, not before starting
    assert len(refused) == 1  # nothing more was tried on the part once the disk refused
    assert tree(dest) == []  # no part, nothing under the final name


async def test_a_full_disk_while_writing_the_record_leaves_no_half_record(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    monkeypatch: pytest.MonkeyPatch,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)

    with pytest.raises(LumaDownloadError, match="disk is full"):
        await download_generation_files(
            client, generation, storage_for(dest), assets=("video",), http=http
        )

    assert ".download.json" not in " ".join(tree(dest))
    assert all(".tmp-" not in name for name in tree(dest))


async def test_the_relay_key_is_never_sent_to_media_links(
    dest: Path, http: httpx.AsyncClient
) -> None:
    relay = LumaClient("https://relay.example", SECRET, extra_headers={"X-Relay": SECRET})
    video = "https://cdn-one.example/v/video.mp4?sig=abc"
    generation = Generation(
        id="gen-1",
        state="completed",
        video=VideoAsset(url=video),
        thumbnail=ImageAsset(url="https://cdn-one.example/v/thumb"),
    )
    with respx.mock(assert_all_mocked=True) as router:
        router.get(video).mock(
            return_value=httpx.Response(302, headers={"location": "https://cdn-two.example/v"})
        )
        router.get("https://cdn-two.example/v").mock(
            return_value=httpx.Response(
                200, content=b"video!", headers={"content-type": "video/mp4"}
            )
        )
        router.get("https://cdn-one.example/v/thumb").mock(
            return_value=httpx.Response(200, content=b"png!", headers={"content-type": "image/png"})
        )
        async with relay:
            done = await download_generation_files(
                relay, generation, storage_for(dest), video_sources=("url",), http=http
            )
        requests = [call.request for call in router.calls]

    assert len(requests) == 3
    for request in requests:
        assert "authorization" not in request.headers
        assert SECRET not in str(request.headers) and SECRET not in str(request.url)
    assert (dest / "gen-1" / "video.mp4").read_bytes() == b"video!"
    assert done.assets["thumbnail"].file_name == "thumbnail.png"  # from the Content-Type


async def test_extensions_fall_back_to_the_url_then_the_default(
    client: LumaClient, dest: Path, http: httpx.AsyncClient
) -> None:
    generation = Generation(
        id="gen-1",
        state="completed",
        video=VideoAsset(url="https://cdn.example/clip?sig=1"),
        thumbnail=ImageAsset(url="https://cdn.example/thumb.webp?sig=1"),
        last_frame=ImageAsset(url="https://cdn.example/last.JPEG"),
    )
    with respx.mock() as router:
        for path in ("clip", "thumb.webp", "last.JPEG"):
            router.get(f"https://cdn.example/{path}").mock(
                return_value=httpx.Response(200, content=b"x", headers={"content-type": "binary"})
            )
        done = await download_generation_files(
            client, generation, storage_for(dest), video_sources=("url",), http=http
        )

    names = {name: asset.file_name for name, asset in done.assets.items()}
    assert names == {
        "video": "video.mp4",
        "thumbnail": "thumbnail.webp",
        "last_frame": "last_frame.jpg",
    }
