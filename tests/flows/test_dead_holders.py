"""What a SIGKILLed run leaves behind is finished and tidied by the next one (found by the
chaos test, tests/e2e/test_chaos.py): a generation recorded by a process that died before
it claimed it is swept at once, not a lease later; part files of dead holders (a part, or
only its meta) are removed by the holder that takes over, never a live holder's part.

Flow runs on Prefect's embedded API, the simulator over loopback HTTP, fake wait time.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.runtime import flow_run

import luma_prefect.ledger._records as records_module
from luma_prefect import Generation, GenerationRequest
from luma_prefect.delivery._download import discard_holder_parts
from luma_prefect.flows import collect_pending
from luma_prefect.ledger._claims import _machine
from luma_prefect.ledger._records import Ledger
from luma_prefect.simulator import RelaySimulator
from luma_prefect.storage import storage_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}


def _dead_holder() -> dict[str, Any]:
    """What a claim or record says of a process of this machine that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return {"machine": _machine(), "pid": child.pid, "started": 1}


def _tag(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:12]


def _record(destination: str, sim: RelaySimulator, generation_id: str, run_id: str | None) -> None:
    Ledger(storage_for(destination)).record_submitted(
        Generation(id=generation_id, state="pending"),
        key=f"key-{generation_id[:8]}",
        request=GenerationRequest(prompt="left behind"),
        flow_run_id=run_id,
        relay_base_url=sim.base_url,
        relay_style="generations",
    )


async def test_a_record_whose_process_died_before_claiming_is_swept_at_once(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the ledger record and the claim: its flow run looks alive (nobody
    marked it Crashed) and no claim names a process, yet the sweep finishes it now."""
    destination = str(tmp_path)
    dead = sim.create_generation(prompt="left behind", state="completed")
    alive = sim.create_generation(prompt="left behind", state="completed")

    @flow
    async def run_still_running() -> list[Any]:
        # Recorded by this (running) flow run: one by a process now dead, one by this one.
        monkeypatch.setattr(records_module, "process_holder", _dead_holder)
        _record(destination, sim, dead, str(flow_run.id))
        monkeypatch.undo()
        _record(destination, sim, alive, str(flow_run.id))
        return await collect_pending(credentials=sim.credentials(), destination=destination, **FAST)

    outcomes = await run_still_running()

    assert [(o.generation_id, o.status) for o in outcomes] == [(dead, "published")]
    assert (tmp_path / dead / "manifest.json").is_file()
    # The one whose recording process lives is its own: it gets a lease to claim it.
    assert Ledger(storage_for(destination)).get(alive).status == "submitted"  # type: ignore[union-attr]
    assert sim.counters().media_requests_by_generation.get(alive, 0) == 0


async def test_the_next_holder_removes_the_parts_of_dead_holders(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    destination = str(tmp_path)
    generation_id = sim.create_generation(prompt="left behind", state="completed")
    _record(destination, sim, generation_id, None)
    folder = tmp_path / generation_id
    folder.mkdir()
    dead = _tag("killed-run")
    (folder / f"video.{dead}.part").write_bytes(b"half a video")
    (folder / f"video.{dead}.part.json").write_text('{"kind": "video_raw"}')
    # Killed after the meta, before the first byte: only the meta is there.
    (folder / f"thumbnail.{dead}.part.json").write_text('{"kind": "thumbnail"}')
    # A download outside any claim (the task used on its own): not a holder's, left alone.
    (folder / "last_frame.part").write_bytes(b"someone's")

    [outcome] = await collect_pending(
        credentials=sim.credentials(), destination=destination, **FAST
    )

    assert outcome.status == "published"
    left = sorted(p.name for p in folder.iterdir() if ".part" in p.name)
    assert left == ["last_frame.part"]


async def test_a_live_holders_part_is_never_removed(sim: RelaySimulator, tmp_path: Path) -> None:
    destination = str(tmp_path)
    generation_id = sim.create_generation(prompt="left behind", state="completed")
    _record(destination, sim, generation_id, None)
    ledger = Ledger(storage_for(destination))
    # A holder at work right now (this process, renewing its lease), mid-download.
    assert ledger.claim(generation_id, "live-run", stale_after=timedelta(minutes=2))
    part = tmp_path / generation_id / f"video.{_tag('live-run')}.part"
    part.parent.mkdir()
    part.write_bytes(b"in progress")

    assert (
        await collect_pending(credentials=sim.credentials(), destination=destination, **FAST) == []
    )

    assert part.read_bytes() == b"in progress"
    assert sim.counters().media_requests_by_generation == {}


@pytest.mark.parametrize("where", ["local", "memory"])
def test_parts_are_listed_with_or_without_their_bytes(tmp_path: Path, where: str) -> None:
    """Local parts sit beside the files; remote ones in a local staging folder."""
    root = str(tmp_path) if where == "local" else f"memory://dead-holders-{tmp_path.name}"
    storage = storage_for(root)
    gid = "4665a07c-7641-4809-a133-10786201bb56"
    whole = storage.open_part(f"{gid}/video.aaaa")
    with whole.writer(append=False) as write:
        write(b"bytes")
    whole.write_meta({"kind": "video_raw"})
    storage.open_part(f"{gid}/thumbnail.bbbb").write_meta({"kind": "thumbnail"})
    storage.open_part(f"{gid}/last_frame").write_meta({"kind": "last_frame"})

    assert storage.parts(gid) == [f"{gid}/last_frame", f"{gid}/thumbnail.bbbb", f"{gid}/video.aaaa"]
    assert discard_holder_parts(storage, gid, keep="aaaa") == [f"{gid}/thumbnail.bbbb"]
    assert storage.parts(gid) == [f"{gid}/last_frame", f"{gid}/video.aaaa"]
    assert discard_holder_parts(storage, gid, keep=None) == [f"{gid}/video.aaaa"]
    assert storage.parts(gid) == [f"{gid}/last_frame"]
    storage.open_part(f"{gid}/last_frame").discard()
