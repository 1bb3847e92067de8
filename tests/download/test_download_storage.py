"""Destinations: local folders, Prefect filesystem blocks, fsspec URLs; the Storage API."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from luma_prefect import LumaClient, LumaConfigurationError, LumaDownloadError
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator._media import synthetic_bytes
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.storage import (
    FsspecStorage,
    LocalStorage,
    Storage,
    _part,
    check_relpath,
    storage_for,
)

from .conftest import MIB, tree


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh `memory://` folder, removed afterwards (the memory filesystem is global)."""
    root = f"memory://luma-test/{uuid.uuid4().hex}"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    shutil.rmtree(FsspecStorage(root).staging, ignore_errors=True)


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, memory_root: str) -> Storage:
    return storage_for(tmp_path / "store" if request.param == "local" else memory_root)


async def test_local_folder_given_as_a_string(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    done = await download_generation_files(client, generation, storage_for(str(dest)), http=http)
    assert Path(done.assets["video"].path) == dest.resolve() / generation.id / "video.mp4"


async def test_local_file_system_block(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    block = LocalFileSystem(basepath=str(dest))
    done = await download_generation_files(client, generation, storage_for(block), http=http)
    assert (dest / generation.id / "video.mp4").read_bytes() == synthetic_bytes(0, 3 * MIB)
    assert done.folder == str(dest.resolve() / generation.id)


async def test_remote_file_system_block_in_memory(
    sim: RelaySimulator, client: LumaClient, completed: Callable[..., Any], http: httpx.AsyncClient
) -> None:
    generation = await completed()
    block = RemoteFileSystem(basepath="memory://luma-test")
    fs = fsspec.filesystem("memory")
    try:
        done = await download_generation_files(client, generation, storage_for(block), http=http)

        video = done.assets["video"]
        assert video.path == f"memory://luma-test/{generation.id}/video.mp4"
        with fsspec.open(video.path, "rb") as file:
            body = file.read()
        assert body == synthetic_bytes(0, 3 * MIB)
        assert hashlib.sha256(body).hexdigest() == video.sha256
        names = sorted(p.rsplit("/", 1)[1] for p in fs.find(f"/luma-test/{generation.id}"))
        assert names == [".download.json", "last_frame.jpg", "thumbnail.jpg", "video.mp4"]

        sim.reset_counters()
        again = await download_generation_files(client, generation, storage_for(block), http=http)
        assert all(asset.reused for asset in again.assets.values())
        assert sim.counters().media_requests_by_generation == {}
    finally:
        fs.rm(f"/luma-test/{generation.id}", recursive=True)
        shutil.rmtree(FsspecStorage("memory://luma-test").staging, ignore_errors=True)


async def test_remote_downloads_resume_from_their_local_staging_part(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    memory_root: str,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    storage = storage_for(memory_root)
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("media",), after_bytes=MIB + 7, times=1))
    with pytest.raises(LumaDownloadError, match="partial file is kept"):
        await download_generation_files(
            client, generation, storage, assets=("video",), max_resume_attempts=0, http=http
        )
    part = storage.open_part(f"{generation.id}/video")
    kept = part.size
    assert kept > 0 and not storage.exists(f"{generation.id}/video.mp4")
    sim.reset_counters()

    await download_generation_files(client, generation, storage, assets=("video",), http=http)

    assert sim.counters().bytes_served == 3 * MIB - kept
    assert storage.read_bytes(f"{generation.id}/video.mp4") == synthetic_bytes(0, 3 * MIB)
    assert part.size == 0  # the staged part is gone


def test_storage_basics(storage: Storage) -> None:
    assert storage.read_bytes("a/b.txt") is None
    assert storage.size("a/b.txt") is None and not storage.exists("a/b.txt")
    assert storage.sha256("a/b.txt") is None

    uri = storage.write_bytes("a/b.txt", b"hello")
    assert uri == storage.uri("a/b.txt") and uri.startswith(storage.root)
    assert storage.read_bytes("a/b.txt") == b"hello"
    assert storage.size("a/b.txt") == 5 and storage.exists("a/b.txt")
    assert storage.sha256("a/b.txt") == hashlib.sha256(b"hello").hexdigest()
    storage.write_bytes("a/b.txt", b"replaced")
    assert storage.read_bytes("a/b.txt") == b"replaced"

    storage.write_bytes("a/c/d.json", b"{}")
    storage.write_bytes("z.txt", b"z")
    assert storage.list("a") == ["a/b.txt", "a/c/d.json"]  # no temporary files left
    assert storage.list() == ["a/b.txt", "a/c/d.json", "z.txt"]
    assert storage.list("missing") == []

    assert storage.delete("a/b.txt") and not storage.delete("a/b.txt")
    assert storage.list("a") == ["a/c/d.json"]


def test_create_exclusive_creates_once(storage: Storage) -> None:
    assert storage.create_exclusive("locks/x.json", b"first")
    assert not storage.create_exclusive("locks/x.json", b"second")
    assert storage.read_bytes("locks/x.json") == b"first"
    assert storage.list("locks") == ["locks/x.json"]


@pytest.mark.parametrize(
    "relpath", ["../x", "a/../../x", "/etc/passwd", "C:/x", "a/\x00", "", "..\\x", "a/.."]
)
def test_paths_outside_the_root_are_refused(storage: Storage, relpath: str) -> None:
    with pytest.raises(LumaConfigurationError, match="not a safe path"):
        storage.write_bytes(relpath, b"x")
    assert storage.list() == []


def test_paths_are_normalised() -> None:
    assert check_relpath("a//b/./c") == "a/b/c"
    assert check_relpath("a\\b") == "a/b"
    assert check_relpath("", allow_root=True) == ""
    assert check_relpath("a:1/video.mp4") == "a:1/video.mp4"  # ids may hold ':'
    with pytest.raises(LumaConfigurationError):
        check_relpath("C:")


def test_a_symlink_out_of_a_local_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    storage = LocalStorage(root)
    with pytest.raises(LumaConfigurationError, match="outside the destination"):
        storage.write_bytes("link/x.txt", b"x")
    assert list(outside.iterdir()) == []


def test_destinations_of_every_kind(tmp_path: Path) -> None:
    assert isinstance(storage_for(tmp_path), LocalStorage)
    assert isinstance(storage_for(str(tmp_path)), LocalStorage)
    assert isinstance(storage_for(f"file://{tmp_path}"), LocalStorage)
    assert isinstance(storage_for(LocalFileSystem(basepath=str(tmp_path))), LocalStorage)
    memory = storage_for("memory://luma-test/kinds")
    assert isinstance(memory, FsspecStorage) and memory.root == "memory://luma-test/kinds"
    assert storage_for(memory) is memory
    for bad in (None, 42, "  "):
        with pytest.raises(LumaConfigurationError, match="destination must be"):
            storage_for(bad)


def test_a_full_disk_on_write_bytes_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    storage = LocalStorage(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(LumaDownloadError, match="disk is full"):
        storage.write_bytes("a/b.json", b"{}")
    assert tree(tmp_path) == []


def test_a_part_takes_a_batch_of_pieces_in_order_through_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch lands in the part in order, in vectored writes of at most IOV_MAX pieces,
    also when the file takes fewer bytes than offered (a short write ends inside a piece)."""
    pieces = [bytes([i % 251]) * (i % 13 + 1) for i in range(3000)]  # ~21 kB in 3000 pieces
    offered: list[int] = []
    real_writev = os.writev

    def short_writev(fd: int, buffers: Any) -> int:
        offered.append(len(buffers))
        head = b"".join(bytes(buffer) for buffer in buffers)[:1000]
        return real_writev(fd, [head])

    monkeypatch.setattr(os, "writev", short_writev)
    part = LocalStorage(tmp_path).open_part("gen/video")
    with part.writer(append=False) as write:
        write(b"head:")
        write(pieces)

    assert part.path.read_bytes() == b"head:" + b"".join(pieces)
    assert len(offered) > 20 and max(offered) <= 1024


def test_a_part_takes_a_batch_where_there_is_no_writev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no os.writev: the batch is joined and written with the file's own write."""
    monkeypatch.delattr(os, "writev")
    part = LocalStorage(tmp_path).open_part("gen/video")
    with part.writer(append=False) as write:
        write(b"head:")
        write([b"one", b"", b"two"])

    assert part.path.read_bytes() == b"head:onetwo"


@pytest.mark.parametrize("slow", [False, True])
async def test_a_slow_write_moves_the_rest_of_the_part_to_a_worker_thread(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    slow: bool,
) -> None:
    """Writes run on the event loop while they are quick; after one slow write (a NAS under
    writeback) the part's next writes go to a worker thread, and the file is still whole."""
    generation = await completed()
    clock = FakeClock(manual=True)
    loop_thread = threading.current_thread()
    on_loop: list[bool] = []
    real_write = _part._write_chunk

    def timed_write(file: Any, data: Any) -> None:
        on_loop.append(threading.current_thread() is loop_thread)
        if slow and len(on_loop) == 1:
            clock.advance(1.0)  # the first write took a second
        real_write(file, data)

    monkeypatch.setattr(_part, "_write_chunk", timed_write)
    done = await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), http=http, clock=clock
    )

    assert len(on_loop) > 2 and on_loop[0]
    assert on_loop[1:] == [not slow] * (len(on_loop) - 1)
    expected = synthetic_bytes(0, 3 * MIB)
    assert Path(done.assets["video"].path).read_bytes() == expected
    assert done.assets["video"].sha256 == hashlib.sha256(expected).hexdigest()
