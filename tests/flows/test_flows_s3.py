"""Flow runs whose destination is on S3: the local S3 server (moto) over loopback HTTP."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from prefect.filesystems import RemoteFileSystem

from luma_prefect import LumaError
from luma_prefect.flows import collect_pending, generate_video
from luma_prefect.ledger._records import Ledger
from luma_prefect.simulator import RelaySimulator
from luma_prefect.storage import storage_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}
PUBLISHED = [".download.json", "last_frame.jpg", "manifest.json", "thumbnail.jpg", "video.mp4"]


def _published_files(s3_server: Any, folder: str) -> dict[str, bytes]:
    """Every object under `folder` (no s3:// prefix), by name, read with a fresh client."""
    fs = s3_server.filesystem()
    return {path.rsplit("/", 1)[1]: fs.cat_file(path) for path in fs.find(folder)}


def _check_published(files: dict[str, bytes], generation_id: str) -> None:
    assert sorted(files) == PUBLISHED  # nothing temporary left beside them
    manifest = json.loads(files["manifest.json"])
    assert manifest["generation_id"] == generation_id
    for name in ("video", "thumbnail", "last_frame"):
        entry = manifest["assets"][name]
        assert hashlib.sha256(files[entry["file"]]).hexdigest() == entry["sha256"]
        assert len(files[entry["file"]]) == entry["bytes"]


async def test_generate_video_publishes_to_s3_through_a_remote_file_system_block(
    sim: RelaySimulator, s3_server: Any, s3_bucket: str
) -> None:
    destination = RemoteFileSystem(basepath=f"{s3_bucket}/luma", settings=s3_server.settings())

    published = await generate_video(
        prompt="a fox on S3", credentials=sim.credentials(), destination=destination, **FAST
    )

    assert published.manifest_path == f"{s3_bucket}/luma/{published.generation_id}/manifest.json"
    bucket = s3_bucket.removeprefix("s3://")
    _check_published(
        _published_files(s3_server, f"{bucket}/luma/{published.generation_id}"),
        published.generation_id,
    )
    record = Ledger(storage_for(destination)).get(published.generation_id)
    assert record is not None and record.status == "published"
    claims = storage_for(destination).list(f".luma-ledger/claims/{published.generation_id}")
    assert claims  # taken and given back on S3, by exclusive creates
    assert sim.counters().submits_accepted == 1


async def test_an_s3_url_destination_takes_its_endpoint_from_the_environment(
    sim: RelaySimulator, s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`s3://bucket/prefix` as a plain string: botocore's own environment variables say
    where the server is and who we are; a timed-out run is then finished by a sweep."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    destination = f"{s3_bucket}/luma"

    with pytest.raises(LumaError, match="did not reach completed"):
        await generate_video(
            prompt="slow, to S3",
            credentials=sim.credentials(),
            destination=destination,
            timeout_seconds=30.0,
            **FAST,
        )
    ledger = Ledger(storage_for(destination))
    (pending,) = ledger.unfinished()

    outcomes = await collect_pending(credentials=sim.credentials(), destination=destination, **FAST)

    assert [(o.generation_id, o.status) for o in outcomes] == [(pending.generation_id, "published")]
    bucket = s3_bucket.removeprefix("s3://")
    _check_published(
        _published_files(s3_server, f"{bucket}/luma/{pending.generation_id}"),
        pending.generation_id,
    )
    assert ledger.unfinished() == []
    assert sim.counters().submits_accepted == 1
