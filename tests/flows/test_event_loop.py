"""No storage call of the flows runs on the event loop.

The ledger, the manifests and the checks of published files live in the destination: on
S3 every call is a request of up to its 60 s deadline, and one made on the event loop holds
every other generation's polls and downloads meanwhile. Every I/O method of the local
storage is watched here: called with a running event loop in its thread, it is noted.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from luma_prefect import GenerationRequest, LumaError
from luma_prefect.flows import collect_pending, generate_video, generate_videos
from luma_prefect.simulator import RelaySimulator
from luma_prefect.storage._local import LocalStorage

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}
IO_METHODS = ("size", "open_read", "write_bytes", "create_exclusive", "delete", "list", "parts")


@pytest.fixture
def on_loop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The storage calls made on an event loop's thread, by method name."""
    seen: list[str] = []

    def watched(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # a worker thread: no loop held
                pass
            else:
                seen.append(name)
            return method(*args, **kwargs)

        return call

    for name in IO_METHODS:
        monkeypatch.setattr(LocalStorage, name, watched(name, getattr(LocalStorage, name)))
    return seen


async def test_generate_video_and_a_batch_keep_storage_off_the_event_loop(
    sim: RelaySimulator, tmp_path: Path, on_loop: list[str]
) -> None:
    await generate_video(
        prompt="a red fox in the snow", credentials=sim.credentials(), destination=str(tmp_path)
    )
    await generate_videos(
        requests=[GenerationRequest(prompt="a cat"), GenerationRequest(prompt="a dog")],
        credentials=sim.credentials(),
        destination=str(tmp_path),
    )

    assert len(list(tmp_path.glob("*/manifest.json"))) == 3
    assert on_loop == []


async def test_a_sweep_keeps_storage_off_the_event_loop(
    sim: RelaySimulator, tmp_path: Path, on_loop: list[str]
) -> None:
    with pytest.raises(LumaError, match="did not reach completed"):
        await generate_video(
            prompt="a slow one",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            timeout_seconds=30.0,
            **FAST,
        )

    outcomes = await collect_pending(
        credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    assert [o.status for o in outcomes] == ["published"]
    assert on_loop == []
