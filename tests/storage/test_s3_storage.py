"""Storage and ledger claims on a real S3-compatible server (moto, over loopback HTTP).

Each "machine" is its own s3fs filesystem (its own HTTP client and caches), as two
workers on two hosts would be.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from luma_prefect import GenerationRequest, LumaDownloadError
from luma_prefect._models import Generation
from luma_prefect.ledger._records import Ledger
from luma_prefect.storage import FsspecStorage, storage_for
from luma_prefect.storage._checks import StorageTimeoutError

ROUNDS = 40


@pytest.fixture
def machine(s3_server: Any, s3_bucket: str) -> Callable[[], FsspecStorage]:
    """A new storage on the test's bucket, with an s3fs client of its own."""

    def make() -> FsspecStorage:
        settings = {**s3_server.settings(), "skip_instance_cache": True}
        return FsspecStorage(f"{s3_bucket}/luma", **settings)

    return make


def race(*calls: Callable[[], object]) -> list[bool]:
    """Run the calls in threads released together; whether each won (a truthy result)."""
    barrier = threading.Barrier(len(calls))
    results: list[bool | None] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = bool(calls[index]())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(r, bool) for r in results), results
    return [bool(r) for r in results]


def test_storage_basics_on_s3(machine: Callable[[], FsspecStorage]) -> None:
    storage = machine()
    assert storage.read_bytes("a/b.txt") is None and storage.size("a/b.txt") is None

    uri = storage.write_bytes("a/b.txt", b"hello")
    assert uri == f"{storage.root}/a/b.txt"
    assert storage.read_bytes("a/b.txt") == b"hello" and storage.size("a/b.txt") == 5
    assert storage.sha256("a/b.txt") == hashlib.sha256(b"hello").hexdigest()
    storage.write_bytes("a/b.txt", b"replaced")
    assert storage.read_bytes("a/b.txt") == b"replaced"
    storage.write_bytes("a/c/d.json", b"{}")
    assert storage.list() == ["a/b.txt", "a/c/d.json"]  # no temporary objects left

    assert storage.delete("a/b.txt") and not storage.delete("a/b.txt")
    assert storage.list("a") == ["a/c/d.json"]


def test_a_committed_part_is_uploaded_whole(machine: Callable[[], FsspecStorage]) -> None:
    storage = machine()
    part = storage.open_part("gen-1/video")
    body = bytes(range(256)) * 4096
    with part.writer(append=False) as write:
        write(body)
    assert part.commit("gen-1/video.mp4") == f"{storage.root}/gen-1/video.mp4"
    assert storage.read_bytes("gen-1/video.mp4") == body
    assert storage.list() == ["gen-1/video.mp4"]


def test_s3_calls_run_with_their_deadline(machine: Callable[[], FsspecStorage]) -> None:
    """s3fs's calls go through the deadline: a microsecond one cuts them before any answer
    (a silent store is tested in test_storage_deadlines.py); the part is kept for the rerun."""
    storage = machine()
    part = storage.open_part("gen-1/video")
    with part.writer(append=False) as write:
        write(b"tiny video")
    storage.upload_deadline_floor_seconds = 1e-6
    with pytest.raises(LumaDownloadError, match=r"did not answer within \S+ s: could not write"):
        part.commit("gen-1/video.mp4")
    storage.call_deadline_seconds = 1e-6
    with pytest.raises(StorageTimeoutError, match=r"\(find of s3://"):
        storage.list()
    with pytest.raises(LumaDownloadError, match="did not answer within 1e-06 s"):
        storage.write_bytes("gen-1/manifest.json", b"{}")

    storage.call_deadline_seconds = storage.upload_deadline_floor_seconds = 60.0
    assert storage.list() == []  # nothing under the final names
    assert part.commit("gen-1/video.mp4") == f"{storage.root}/gen-1/video.mp4"
    assert storage.read_bytes("gen-1/video.mp4") == b"tiny video"
    storage.upload_deadline_floor_seconds = 1e-6  # the check of a published file
    with pytest.raises(StorageTimeoutError, match=r"\(read of s3://"):
        storage.sha256("gen-1/video.mp4")


def test_create_exclusive_creates_once(machine: Callable[[], FsspecStorage]) -> None:
    first, second = machine(), machine()
    assert first.create_exclusive("locks/x.json", b"first")
    assert not second.create_exclusive("locks/x.json", b"second")
    assert not first.create_exclusive("locks/x.json", b"third")
    assert second.read_bytes("locks/x.json") == b"first"


def test_racing_writers_on_one_key_have_exactly_one_winner(
    machine: Callable[[], FsspecStorage],
) -> None:
    writers = [machine() for _ in range(3)]
    for round_ in range(ROUNDS):
        key = f"locks/{round_}.json"
        calls = [partial(w.create_exclusive, key, b"writer %d" % i) for i, w in enumerate(writers)]
        results = race(*calls)
        assert results.count(True) == 1, f"round {round_}: {results}"
        winner = results.index(True)
        assert writers[0].read_bytes(key) == b"writer %d" % winner


def _now() -> datetime:
    return datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_two_sweeps_claiming_one_generation_have_exactly_one_winner(
    machine: Callable[[], FsspecStorage],
) -> None:
    ledgers = [Ledger(machine(), clock=_now) for _ in range(2)]
    ttl = timedelta(minutes=15)
    for round_ in range(ROUNDS // 2):
        generation_id = str(uuid.uuid4())
        results = race(
            partial(ledgers[0].claim, generation_id, "sweep-a", stale_after=ttl),
            partial(ledgers[1].claim, generation_id, "sweep-b", stale_after=ttl),
        )
        assert results.count(True) == 1, f"round {round_}: {results}"
        winner = "sweep-a" if results[0] else "sweep-b"
        assert ledgers[0].claim_owner(generation_id) == winner
        assert ledgers[1].claim_owner(generation_id) == winner


def test_two_sweeps_taking_over_a_stale_claim_have_exactly_one_winner(
    machine: Callable[[], FsspecStorage],
) -> None:
    clock = [_now()]
    ledgers = [Ledger(machine(), clock=lambda: clock[0]) for _ in range(2)]
    ttl = timedelta(minutes=15)
    for round_ in range(ROUNDS // 3):
        generation_id = str(uuid.uuid4())
        clock[0] = _now()
        # Held by a worker on another machine (so not judged by PID), then gone quiet.
        assert ledgers[0].claim(generation_id, "dead-worker", stale_after=ttl)
        clock[0] = _now() + ttl * 2
        results = race(
            partial(ledgers[0].claim, generation_id, "sweep-a", stale_after=ttl),
            partial(ledgers[1].claim, generation_id, "sweep-b", stale_after=ttl),
        )
        assert results.count(True) == 1, f"round {round_}: {results}"


def test_a_record_rewritten_by_another_machine_is_read_whole(
    machine: Callable[[], FsspecStorage],
) -> None:
    """One sweep lists the ledger, another machine rewrites a record, the sweep reads it.

    With s3fs's listing cache the read failed (FileExpired: the listed version was gone)
    and a record written meanwhile was not seen at all.
    """
    here, there = Ledger(machine(), clock=_now), Ledger(machine(), clock=_now)
    request = GenerationRequest(prompt="a fox")
    first = Generation.model_validate({"id": str(uuid.uuid4()), "state": "pending"})
    there.record_submitted(
        first, key="k1", request=request, flow_run_id=None, relay_base_url="x", relay_style="y"
    )
    assert [r.generation_id for r in here.unfinished()] == [first.id]

    there.mark(first.id, "downloaded")
    second = Generation.model_validate({"id": str(uuid.uuid4()), "state": "pending"})
    there.record_submitted(
        second, key="k2", request=request, flow_run_id=None, relay_base_url="x", relay_style="y"
    )

    record = here.get(first.id)
    assert record is not None and record.status == "downloaded"
    assert here.storage.exists(f".luma-ledger/generations/{second.id}.json")
    assert {r.generation_id for r in here.unfinished()} == {first.id, second.id}


class _S3Answer(OSError):
    """What s3fs raises for an S3 error answer it has no Python name for."""

    def __init__(self, code: str) -> None:
        super().__init__(f"S3 said {code}")
        answer = {"Error": {"Code": code}}
        self.__cause__ = type("ClientError", (Exception,), {"response": answer})()


class _ScriptedS3:
    """Stands in for s3fs: each conditional PUT meets the next scripted answer."""

    def __init__(self, *answers: BaseException | None) -> None:
        self.answers = list(answers)
        self.puts = 0

    def pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None:
        assert mode == "create"
        self.puts += 1
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer


@pytest.mark.parametrize(
    ("answers", "created", "puts"),
    [
        # 412 without the name of the failed condition (some S3-compatible servers)
        ((_S3Answer("PreconditionFailed"),), False, 1),
        # 409: another conditional write of the key was in flight; S3 asks for a retry
        ((_S3Answer("ConditionalRequestConflict"), FileExistsError()), False, 2),
        ((_S3Answer("ConditionalRequestConflict"), None), True, 2),
    ],
)
def test_conditional_put_answers(
    answers: tuple[BaseException | None, ...], created: bool, puts: int
) -> None:
    storage = FsspecStorage("s3://bucket/luma", key="k", secret="s")
    storage.fs = _ScriptedS3(*answers)
    assert storage.create_exclusive("locks/x.json", b"{}") is created
    assert storage.fs.puts == puts


def test_other_s3_errors_are_raised() -> None:
    storage = FsspecStorage("s3://bucket/luma", key="k", secret="s")
    storage.fs = _ScriptedS3(*[_S3Answer("ConditionalRequestConflict")] * 3)
    with pytest.raises(OSError, match="ConditionalRequestConflict"):
        storage.create_exclusive("locks/x.json", b"{}")
    storage.fs = _ScriptedS3(_S3Answer("AccessDenied"))
    with pytest.raises(OSError, match="AccessDenied"):
        storage.create_exclusive("locks/x.json", b"{}")


class _NoExclusiveFS(MemoryFileSystem):
    """A filesystem that refuses mode "xb" (as some fsspec backends do)."""

    protocol = "luma-no-xb"

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "x" in mode:
            raise NotImplementedError("no exclusive mode here")
        return super()._open(path, mode, *args, **kwargs)


class _UnknownFS(MemoryFileSystem):
    """A filesystem that accepts mode "xb" without saying whether it is atomic."""

    protocol = "luma-unknown-xb"


@pytest.mark.parametrize(
    ("fs_class", "says"),
    [(_NoExclusiveFS, "refuses exclusive creation"), (_UnknownFS, "may or may not")],
)
def test_a_non_atomic_exclusive_create_warns_once_per_filesystem(
    fs_class: type[MemoryFileSystem], says: str, caplog: pytest.LogCaptureFixture
) -> None:
    fsspec.register_implementation(fs_class.protocol, fs_class, clobber=True)
    root = f"{fs_class.protocol}://luma-test/{uuid.uuid4().hex}"
    caplog.set_level(logging.WARNING, logger="luma_prefect.storage")
    storage = storage_for(root)
    assert isinstance(storage, FsspecStorage)
    try:
        assert storage.create_exclusive("locks/a.json", b"a")
        assert not storage.create_exclusive("locks/a.json", b"b")
        assert storage_for(root).create_exclusive("locks/b.json", b"b")  # same filesystem
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert says in warnings[0] and "not atomic" in warnings[0] and root in warnings[0]
        assert storage.read_bytes("locks/a.json") == b"a"
    finally:
        storage.fs.rm(storage.base, recursive=True)
