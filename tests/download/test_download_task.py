"""The `download_generation` Prefect task, run inside a flow; many downloads at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.filesystems import LocalFileSystem
from prefect.runtime import flow_run

from luma_prefect import LumaClient
from luma_prefect._outcomes import DownloadedGeneration
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.simulator import RelaySimulator
from luma_prefect.simulator._media import synthetic_bytes
from luma_prefect.storage import storage_for
from luma_prefect.tasks import download_generation

from .conftest import MIB


def test_the_task_downloads_by_id_inside_a_flow(
    prefect_harness: None, sim: RelaySimulator, dest: Path
) -> None:
    generation_id = sim.create_generation(prompt="a fox", state="completed")
    credentials = sim.credentials()
    flow_runs: list[UUID] = []

    @flow
    async def fetch(generation_id: str) -> DownloadedGeneration:
        flow_runs.append(UUID(flow_run.id))
        return await download_generation(
            credentials, generation_id, LocalFileSystem(basepath=str(dest)), assets=["video"]
        )

    done = asyncio.run(fetch(generation_id))

    assert done.generation.id == generation_id
    assert done.relay_base_url == sim.base_url and done.relay_style == "generations"
    assert (dest / generation_id / "video.mp4").read_bytes() == synthetic_bytes(0, 3 * MIB)
    assert done.assets["video"].source_kind == "video_raw"

    again = asyncio.run(fetch(generation_id))
    assert again.assets["video"].reused

    async def task_run_names() -> list[str]:
        # This test's runs only: other runs on the same API may have made some.
        async with get_client() as prefect:
            runs = await prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_runs))
            )
        return [run.name for run in runs]

    assert f"download {generation_id[:8]}" in asyncio.run(task_run_names())


async def test_many_generations_at_once_can_share_one_media_client(
    sim: RelaySimulator, client: LumaClient, completed: Callable[..., object], dest: Path
) -> None:
    generations = [await completed(f"fox {i}") for i in range(6)]
    async with sim.credentials().get_media_client(max_connections=2) as http:
        results = await asyncio.gather(
            *(
                download_generation_files(client, g, storage_for(dest), http=http)
                for g in generations
            )
        )
    assert [r.generation.id for r in results] == [g.id for g in generations]
    assert all(r.assets["video"].bytes == 3 * MIB for r in results)
    assert sim.counters().bytes_served >= 6 * 3 * MIB
