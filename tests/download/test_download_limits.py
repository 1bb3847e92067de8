"""Every media transfer ends: a stalled or trickling body is cut and resumed, and a file that
outlives its total deadline fails (part kept). Time here is a manual `FakeClock`: no sleeps."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from luma_prefect import Generation, LumaClient, LumaDownloadError
from luma_prefect.delivery._download import TransferLimits, download_generation_files
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator._media import synthetic_bytes
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.storage import storage_for

from .conftest import MIB, eventually

SIZE = 3 * MIB
LIMITS = TransferLimits(deadline_seconds=600.0, stall_seconds=30.0, stall_bytes=64 * 1024)


def _video_download(
    client: LumaClient,
    generation: Generation,
    dest: Path,
    http: httpx.AsyncClient,
    limits: TransferLimits,
    clock: FakeClock,
) -> asyncio.Future[Any]:
    """The video's download, started on a fake clock: the test moves time itself."""
    return asyncio.ensure_future(
        download_generation_files(
            client,
            generation,
            storage_for(dest),
            assets=("video",),
            http=http,
            limits=limits,
            clock=clock,
        )
    )


def part_size(dest: Path, generation_id: str) -> int:
    part = dest / generation_id / "video.part"
    return part.stat().st_size if part.exists() else 0


def media_requests(sim: RelaySimulator, generation_id: str) -> int:
    return sim.counters().media_requests_by_generation.get(generation_id, 0)


async def advance_until_done(clock: FakeClock, download: asyncio.Future[Any]) -> Any:
    """One stall window at a time, letting the transfer notice each, until it ends."""
    for _ in range(40):
        clock.advance(LIMITS.stall_seconds)
        done, _ = await asyncio.wait({download}, timeout=0.25)
        if done:
            return download.result()
    download.cancel()
    raise AssertionError("the download never ended")


@pytest.mark.parametrize("kind", [FaultKind.STALL_BODY, FaultKind.TRICKLE_BODY])
async def test_a_stalled_or_trickling_body_is_cut_and_resumed(
    kind: FaultKind,
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    # After 1 MiB: silence, or a byte every 10 ms (the rest would take ~6 hours).
    sim.add_fault(Fault(kind, after_bytes=MIB, delay_seconds=0.01, times=1))
    clock = FakeClock(manual=True)
    download = _video_download(client, generation, dest, http, LIMITS, clock)
    await eventually(lambda: part_size(dest, generation.id) >= MIB, "the first MiB was written")
    sim.reset_counters()

    done = await advance_until_done(clock, download)

    assert media_requests(sim, generation.id) == 1  # cut once, then resumed with one request
    assert abs(sim.counters().bytes_served - (SIZE - MIB)) <= 1000  # from where it was
    assert Path(done.assets["video"].path).read_bytes() == synthetic_bytes(0, SIZE)
    assert done.assets["video"].sha256 == hashlib.sha256(synthetic_bytes(0, SIZE)).hexdigest()
    assert sim.faults() == []  # the fault fired once, and retired


async def test_a_body_that_stalls_from_its_first_byte_is_cut_after_one_window(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(Fault(FaultKind.STALL_BODY, after_bytes=0, times=1))
    clock = FakeClock(manual=True)
    download = _video_download(client, generation, dest, http, LIMITS, clock)
    await eventually(lambda: media_requests(sim, generation.id) == 1, "the request came")
    clock.advance(LIMITS.stall_seconds - 1)
    for _ in range(50):  # room to misbehave: nothing may happen before the window ends
        await asyncio.sleep(0)
    assert media_requests(sim, generation.id) == 1 and not download.done()

    clock.advance(1)
    done = await asyncio.wait_for(download, 10)

    assert media_requests(sim, generation.id) == 2
    assert done.assets["video"].bytes == SIZE


async def test_an_answer_whose_headers_never_come_is_cut_after_one_window(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    """No per-read timeout is sent (the stall check is stricter), so the stall check alone
    must bound the wait for the answer's headers as it bounds the body."""
    generation = await completed()
    sim.add_fault(Fault(FaultKind.SLOW, routes=("media",), delay_seconds=3600.0, times=1))
    clock = FakeClock(manual=True)
    download = _video_download(client, generation, dest, http, LIMITS, clock)
    await eventually(lambda: media_requests(sim, generation.id) == 1, "the request came")
    clock.advance(LIMITS.stall_seconds - 1)
    for _ in range(50):
        await asyncio.sleep(0)
    assert not download.done()

    clock.advance(1)
    done = await asyncio.wait_for(download, 10)

    assert media_requests(sim, generation.id) == 2
    assert done.assets["video"].bytes == SIZE


async def test_a_file_that_outlives_its_deadline_fails_and_keeps_its_part(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    # A trickle fast enough for the stall check (a window of an hour), never ending in time.
    sim.add_fault(Fault(FaultKind.TRICKLE_BODY, after_bytes=MIB, delay_seconds=0.01))
    limits = TransferLimits(deadline_seconds=120.0, stall_seconds=3600.0, stall_bytes=1)
    clock = FakeClock(manual=True)
    download = _video_download(client, generation, dest, http, limits, clock)
    await eventually(lambda: part_size(dest, generation.id) >= MIB, "the first MiB was written")
    clock.advance(119)
    for _ in range(50):
        await asyncio.sleep(0)
    assert not download.done()

    clock.advance(1)
    with pytest.raises(LumaDownloadError, match="within its limit of 120 s") as info:
        await asyncio.wait_for(download, 10)

    assert info.value.generation_id == generation.id and info.value.retryable
    part = dest / generation.id / "video.part"
    assert 0 < part.stat().st_size < SIZE  # kept for a resume
    assert part.read_bytes() == synthetic_bytes(0, part.stat().st_size)
    assert media_requests(sim, generation.id) == 1


@pytest.mark.parametrize(
    ("limits", "client_read", "sent_read"),
    [
        (LIMITS, 60.0, None),  # two 30 s windows cut a silent link by 60 s: no per-read timer
        (TransferLimits(stall_seconds=40.0), 60.0, 60.0),  # the windows alone: 80 s
        (TransferLimits(stall_bytes=0), 60.0, 60.0),  # no stall check: the read timeout stays
        (LIMITS, 5.0, 5.0),  # the client's own stricter read timeout stays
    ],
)
async def test_the_read_timeout_is_left_out_only_where_the_stall_check_cuts_sooner(
    limits: TransferLimits,
    client_read: float,
    sent_read: float | None,
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    http.timeout = httpx.Timeout(client_read, connect=15.0)
    sent: list[dict[str, float | None]] = []

    async def capture(request: httpx.Request) -> None:
        sent.append(request.extensions["timeout"])

    http.event_hooks["request"].append(capture)

    done = await download_generation_files(
        client, generation, storage_for(dest), assets=("video",), http=http, limits=limits
    )

    assert done.assets["video"].bytes == SIZE
    assert sent == [{"connect": 15.0, "read": sent_read, "write": client_read, "pool": client_read}]
