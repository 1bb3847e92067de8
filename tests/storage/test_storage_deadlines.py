"""Every call of `FsspecStorage` to a network store has a total deadline.

A fake async store (a dict) stands in for a silent S3 endpoint: the calls it is told to
keep quiet await an event nobody sets, as a store that took the request and never answers.
A fake blocking store (fsspec's memory store, as sftp or smb would be) blocks the same way.
Each storage call runs in a daemon thread given `BOUND` seconds: without a deadline the
call would hang there forever and the test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from luma_prefect import LumaDownloadError
from luma_prefect.storage import FsspecStorage
from luma_prefect.storage._checks import StorageTimeoutError

DEADLINE = 0.3
BOUND = 10.0  # far beyond the deadline: only a missing deadline comes near it
SECRET = "hunter2-not-in-any-message"


class _SilentStore(AsyncFileSystem):
    """An async store in a dict; the methods named in `silent` never answer."""

    protocol = "luma-silent"
    cachable = False  # one store per test

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objects: dict[str, bytes] = {}
        self.silent: set[str] = set()

    async def _answer(self, method: str) -> None:
        if method in self.silent:
            await asyncio.Event().wait()  # never set

    async def _put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        await self._answer("put_file")
        self.objects[self._strip_protocol(rpath)] = Path(lpath).read_bytes()

    async def _pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **_: Any) -> None:
        await self._answer("pipe_file")
        if mode == "create" and self._strip_protocol(path) in self.objects:
            raise FileExistsError(path)
        self.objects[self._strip_protocol(path)] = bytes(value)

    async def _cat_file(self, path: str, start: Any = None, end: Any = None, **_: Any) -> bytes:
        await self._answer("cat_file")
        try:
            return self.objects[self._strip_protocol(path)]
        except KeyError:
            raise FileNotFoundError(path) from None

    async def _info(self, path: str, **_: Any) -> dict[str, Any]:
        await self._answer("info")
        data = await self._cat_file(path)
        return {"name": self._strip_protocol(path), "size": len(data), "type": "file"}

    async def _exists(self, path: str, **_: Any) -> bool:
        await self._answer("exists")
        return self._strip_protocol(path) in self.objects

    async def _find(self, path: str, **_: Any) -> list[str]:
        await self._answer("find")
        top = self._strip_protocol(path).rstrip("/") + "/"
        return sorted(key for key in self.objects if key.startswith(top))

    async def _rm_file(self, path: str, **_: Any) -> None:
        await self._answer("rm_file")
        if self.objects.pop(self._strip_protocol(path), None) is None:
            raise FileNotFoundError(path)

    async def _mv_file(self, path1: str, path2: str, **_: Any) -> None:
        await self._answer("mv_file")
        data = self.objects.pop(self._strip_protocol(path1))
        self.objects[self._strip_protocol(path2)] = data

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        await self._answer("makedirs")

    async def open_async(self, path: str, mode: str = "rb", **_: Any) -> _Reader:
        return _Reader(self, await self._cat_file(path))


class _Reader:
    """A streamed read of one object, 1 KiB per read: silent if `open_async` is."""

    def __init__(self, store: _SilentStore, data: bytes) -> None:
        self.store, self.data = store, data

    async def read(self, length: int = -1) -> bytes:
        await self.store._answer("open_async")
        block, self.data = self.data[:1024], self.data[1024:]
        return block

    async def close(self) -> None:
        pass


def _on(store: type[Any], root: str) -> FsspecStorage:
    """A storage on a fake store (registered for its protocol), its deadlines `DEADLINE`."""
    fsspec.register_implementation(store.protocol, store, clobber=True)
    made = FsspecStorage(f"{store.protocol}://{root}/{uuid.uuid4().hex}", secret=SECRET)
    made.call_deadline_seconds = DEADLINE
    made.upload_deadline_floor_seconds = DEADLINE
    return made


@pytest.fixture
def storage() -> Iterator[FsspecStorage]:
    made = _on(_SilentStore, "bucket")
    yield made
    made.fs.silent.clear()


def outcome(call: Callable[[], object]) -> object:
    """What `call` returned or raised, run in a daemon thread given BOUND seconds."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), f"still waiting on the store after {BOUND} s"
    return result[0]


def _staged(storage: FsspecStorage, body: bytes) -> Any:
    part = storage.open_part("gen-1/video")
    with part.writer(append=False) as write:
        write(body)
    return part


@pytest.mark.parametrize("silent", ["put_file", "mv_file"])
def test_an_upload_to_a_silent_store_fails_at_its_deadline_and_keeps_the_part(
    storage: FsspecStorage, silent: str
) -> None:
    body = b"video bytes " * 1000
    part = _staged(storage, body)
    storage.fs.silent.add(silent)

    error = outcome(lambda: part.commit("gen-1/video.mp4"))

    assert isinstance(error, LumaDownloadError), error
    message = str(error)
    assert f"did not answer within {DEADLINE:g} s" in message
    assert storage.uri("gen-1/video.mp4") in message and f"{part.path} is kept" in message
    assert "collect-pending" in message and "\n" not in message and SECRET not in message
    assert error.retryable
    assert part.path.read_bytes() == body  # staged part kept for the next run
    assert storage.fs.objects == {}  # nothing under the final name, no temporary left

    # The store answers again: the next run commits the same part.
    storage.fs.silent.clear()
    assert outcome(lambda: part.commit("gen-1/video.mp4")) == storage.uri("gen-1/video.mp4")
    assert storage.read_bytes("gen-1/video.mp4") == body
    assert not part.path.exists()


def test_a_write_to_a_silent_store_fails_at_its_deadline(storage: FsspecStorage) -> None:
    storage.fs.silent.add("pipe_file")

    error = outcome(lambda: storage.write_bytes("gen-1/manifest.json", b"{}"))

    assert isinstance(error, LumaDownloadError), error
    assert f"did not answer within {DEADLINE:g} s" in str(error)
    assert storage.uri("gen-1/manifest.json") in str(error) and SECRET not in str(error)
    assert storage.fs.objects == {}


@pytest.mark.parametrize(
    ("silent", "call", "says"),
    [
        ("cat_file", lambda s: s.read_bytes("gen-1/record.json"), "cat_file"),
        # A store that does not answer says nothing about the file: never "absent".
        ("info", lambda s: s.size("gen-1/record.json"), "info"),
        ("find", lambda s: s.list("gen-1"), "find"),
        ("rm_file", lambda s: s.delete("gen-1/record.json"), "rm_file"),
        # The check of a published file reads it whole (bounded like an upload of its size).
        ("open_async", lambda s: s.sha256("gen-1/record.json"), "read"),
    ],
)
def test_a_silent_store_fails_calls_at_their_deadline(
    storage: FsspecStorage, silent: str, call: Callable[[FsspecStorage], object], says: str
) -> None:
    storage.write_bytes("gen-1/record.json", b"{}")
    storage.fs.silent.add(silent)

    error = outcome(lambda: call(storage))

    assert isinstance(error, StorageTimeoutError), error
    assert isinstance(error, OSError)  # what callers of fsspec already catch
    assert f"did not answer within {DEADLINE:g} s ({says} of luma-silent://" in str(error)
    assert "collect-pending" in str(error) and SECRET not in str(error)
    storage.fs.silent.clear()
    assert storage.read_bytes("gen-1/record.json") == b"{}"


def test_a_file_is_hashed_in_one_streamed_read(storage: FsspecStorage) -> None:
    body = bytes(range(256)) * 40  # ten reads of the fake's 1 KiB
    storage.write_bytes("gen-1/video.mp4", body)
    assert storage.sha256("gen-1/video.mp4") == hashlib.sha256(body).hexdigest()
    assert storage.sha256("gen-1/missing.mp4") is None


class _SilentSyncStore(MemoryFileSystem):
    """A blocking store in memory, as sftp, smb or ftp are (no coroutines, no deadline of
    its own); the methods named in `silent` block until `released`."""

    protocol = "luma-silent-sync"
    cachable = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, global_store=False, **kwargs)
        self.silent: set[str] = set()
        self.released = threading.Event()

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return super()._strip_protocol(str(path).removeprefix(f"{cls.protocol}://"))

    def _answer(self, method: str) -> None:
        if method in self.silent:
            self.released.wait()

    def pipe_file(self, path: Any, value: Any, mode: str = "overwrite", **kwargs: Any) -> Any:
        self._answer("pipe_file")
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def put_file(self, lpath: Any, rpath: Any, *args: Any, **kwargs: Any) -> Any:
        self._answer("put_file")
        return super().put_file(lpath, rpath, *args, **kwargs)

    def cat_file(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._answer("cat_file")
        return super().cat_file(path, *args, **kwargs)

    def info(self, path: Any, **kwargs: Any) -> Any:
        self._answer("info")
        return super().info(path, **kwargs)

    def find(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._answer("find")
        return super().find(path, *args, **kwargs)

    def rm_file(self, path: Any) -> Any:
        self._answer("rm_file")
        return super().rm_file(path)

    def mv(self, path1: Any, path2: Any, *args: Any, **kwargs: Any) -> Any:
        self._answer("mv")
        return super().mv(path1, path2, *args, **kwargs)

    def _open(self, path: Any, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        self._answer("open")
        return super()._open(path, mode, *args, **kwargs)


@pytest.fixture
def blocking() -> Iterator[FsspecStorage]:
    made = _on(_SilentSyncStore, "share")
    yield made
    made.fs.released.set()  # the calls left behind end with the test


def test_a_blocking_store_works_through_its_deadlines(blocking: FsspecStorage) -> None:
    body = b"video bytes " * 100
    assert outcome(lambda: blocking.write_bytes("gen-1/record.json", b"{}")) is not None
    assert outcome(lambda: blocking.create_exclusive("gen-1/claim.json", b"1")) is True
    assert outcome(lambda: blocking.create_exclusive("gen-1/claim.json", b"2")) is False
    part = _staged(blocking, body)
    assert outcome(lambda: part.commit("gen-1/video.mp4")) == blocking.uri("gen-1/video.mp4")

    assert blocking.read_bytes("gen-1/claim.json") == b"1"
    assert blocking.sha256("gen-1/video.mp4") == hashlib.sha256(body).hexdigest()
    assert blocking.list("gen-1") == ["gen-1/claim.json", "gen-1/record.json", "gen-1/video.mp4"]
    assert blocking.delete("gen-1/claim.json") is True
    assert blocking.size("gen-1/claim.json") is None


@pytest.mark.parametrize(
    ("silent", "call", "says"),
    [
        ("pipe_file", lambda s: s.write_bytes("gen-1/manifest.json", b"{}"), "pipe_file"),
        ("mv", lambda s: s.write_bytes("gen-1/manifest.json", b"{}"), "mv"),
        ("open", lambda s: s.create_exclusive("gen-1/claim.json", b"1"), "create"),
        ("cat_file", lambda s: s.read_bytes("gen-1/record.json"), "cat_file"),
        ("info", lambda s: s.size("gen-1/record.json"), "info"),
        ("find", lambda s: s.list("gen-1"), "find"),
        ("rm_file", lambda s: s.delete("gen-1/record.json"), "rm_file"),
        ("open", lambda s: s.sha256("gen-1/record.json"), "read"),
        ("put_file", lambda s: _staged(s, b"video").commit("gen-1/video.mp4"), "put_file"),
    ],
)
def test_a_blocking_store_fails_calls_at_their_deadline(
    blocking: FsspecStorage, silent: str, call: Callable[[FsspecStorage], object], says: str
) -> None:
    blocking.write_bytes("gen-1/record.json", b"{}")
    blocking.fs.silent.add(silent)

    error = outcome(lambda: call(blocking))

    # A write fails as the delivery's error (kept parts, what to do), caused by the timeout.
    timeout = error if isinstance(error, StorageTimeoutError) else error.__cause__
    assert isinstance(timeout, StorageTimeoutError), error
    assert timeout.call == says and timeout.seconds == DEADLINE
    message = str(error)
    assert f"did not answer within {DEADLINE:g} s" in message
    assert "luma-silent-sync://" in message and blocking.root.rsplit("/", 1)[1] in message
    assert "\n" not in message and SECRET not in message
    blocking.fs.silent.clear()
    assert blocking.read_bytes("gen-1/record.json") == b"{}"
