"""Media served like a CDN: real files, synthetic large bodies, Range, cut connections."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.simulator._media import CHUNK_SIZE, media_file, parse_range, synthetic_bytes

MiB = 1 << 20


def completed_links(sim: RelaySimulator, api: httpx.Client) -> dict[str, str]:
    gid = sim.create_generation(prompt="media", state="completed")
    done = api.get(f"/luma/generations/{gid}").json()
    return {
        "id": gid,
        "video": done["video"]["url"],
        "raw": done["video_raw"]["url"],
        "thumbnail": done["thumbnail"]["url"],
        "last_frame": done["last_frame"]["url"],
    }


def test_real_files_with_types_and_lengths(sim: RelaySimulator, api: httpx.Client) -> None:
    links = completed_links(sim, api)
    for name, url in links.items():
        if name == "id":
            continue
        answer = httpx.get(url)
        assert answer.status_code == 200
        assert answer.headers["accept-ranges"] == "bytes"
        assert int(answer.headers["content-length"]) == len(answer.content)
        assert answer.headers["x-request-id"]
        if name in ("video", "raw"):
            assert answer.headers["content-type"] == "video/mp4"
            assert answer.content == media_file("video.mp4")[0]
        else:
            assert answer.headers["content-type"] == "image/jpeg"
            assert answer.content[:3] == b"\xff\xd8\xff"
    for name in ("video.mp4", "thumbnail.jpg", "last_frame.jpg"):
        assert len(media_file(name)[0]) < 100_000
    counters = sim.counters()
    assert counters.media_requests_by_generation == {links["id"]: 4}
    assert counters.requests["media"] == 4
    total = 2 * len(media_file("video.mp4")[0]) + len(media_file("thumbnail.jpg")[0])
    assert counters.bytes_served == total + len(media_file("last_frame.jpg")[0])


def test_range_requests(sim: RelaySimulator, api: httpx.Client) -> None:
    url = completed_links(sim, api)["video"]
    content = media_file("video.mp4")[0]
    size = len(content)
    first = httpx.get(url, headers={"Range": "bytes=0-99"})
    assert first.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    assert first.content == content[:100]
    tail = httpx.get(url, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == content[-100:]
    rest = httpx.get(url, headers={"Range": "bytes=100-"})
    assert rest.status_code == 206 and rest.content == content[100:]
    clipped = httpx.get(url, headers={"Range": f"bytes={size - 10}-{size + 500}"})
    assert clipped.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"
    beyond = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert httpx.get(url, headers={"Range": "bytes=-0"}).status_code == 416
    whole = httpx.get(url, headers={"Range": "bytes=0-1,5-9"})
    assert whole.status_code == 200 and whole.content == content
    assert httpx.get(url, headers={"Range": "bytes=9-1"}).status_code == 200
    assert httpx.get(url, headers={"Range": "items=0-1"}).status_code == 200


def test_head(sim: RelaySimulator, api: httpx.Client) -> None:
    url = completed_links(sim, api)["video"]
    answer = httpx.head(url)
    assert answer.status_code == 200
    assert answer.headers["content-length"] == str(len(media_file("video.mp4")[0]))
    assert answer.content == b""


def test_media_access_rules(sim: RelaySimulator, api: httpx.Client) -> None:
    links = completed_links(sim, api)
    pending = sim.create_generation(prompt="p", state="pending")
    assert httpx.get(f"{sim.base_url}/cdn/{pending}/video.mp4?sig=1").status_code == 404
    assert httpx.get(f"{sim.base_url}/cdn/nope/video.mp4?sig=1").status_code == 404
    assert httpx.get(f"{sim.base_url}/cdn/{links['id']}/other.bin?sig=1").status_code == 404
    assert httpx.get(links["video"].replace("sig=1", "sig=9")).status_code == 403
    assert httpx.get(links["video"].split("?")[0]).status_code == 403


def test_synthetic_video_bytes(
    sim_factory: Callable[..., RelaySimulator], client_for: Callable[..., httpx.Client]
) -> None:
    size = 3 * MiB + 17
    sim = sim_factory(video_bytes=size)
    url = completed_links(sim, client_for(sim))["raw"]
    whole = httpx.get(url)
    assert whole.status_code == 200 and len(whole.content) == size
    assert whole.content == synthetic_bytes(0, size)
    assert whole.content[4:8] == b"ftyp"
    start, end = CHUNK_SIZE - 100, 2 * CHUNK_SIZE + 100
    part = httpx.get(url, headers={"Range": f"bytes={start}-{end}"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert part.content == whole.content[start : end + 1]
    assert sim.counters().bytes_served == size + (end - start + 1)
    thumb = completed_links(sim, client_for(sim))["thumbnail"]
    assert httpx.get(thumb).content == media_file("thumbnail.jpg")[0]


def test_synthetic_route_large_body_range(sim: RelaySimulator) -> None:
    size = 1 << 30
    url = f"{sim.base_url}/cdn/synthetic/big.mp4?size={size}"
    head = httpx.head(url)
    assert head.headers["content-length"] == str(size)
    start = size - 2 * MiB
    tail = httpx.get(url, headers={"Range": f"bytes={start}-"})
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes {start}-{size - 1}/{size}"
    assert tail.content == synthetic_bytes(start, 2 * MiB)
    assert httpx.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
    small = httpx.get(f"{sim.base_url}/cdn/synthetic/x.mp4?size=10")
    assert small.content == synthetic_bytes(0, 10)
    empty = httpx.get(f"{sim.base_url}/cdn/synthetic/x.mp4?size=0")
    assert empty.status_code == 200 and empty.content == b""
    assert httpx.get(f"{sim.base_url}/cdn/synthetic/x.mp4?size=-1").status_code == 400
    assert httpx.get(f"{sim.base_url}/cdn/synthetic/x.mp4?size=abc").status_code == 400
    counters = sim.counters()
    assert counters.bytes_served == 2 * MiB + 10
    assert counters.media_requests_by_generation == {}


def test_stream_stops_when_the_client_leaves(sim: RelaySimulator) -> None:
    url = f"{sim.base_url}/cdn/synthetic/big.mp4?size={1 << 30}"
    with httpx.Client() as client, client.stream("GET", url) as answer:
        received = 0
        for chunk in answer.iter_raw(64 * 1024):
            received += len(chunk)
            if received >= 2 * MiB:
                break
    # Then the server notices, well before having produced the whole GiB.
    with httpx.Client(base_url=sim.base_url) as admin:
        for _ in range(200):
            if admin.get("/_simulator/counters").json()["bytes_served"] < 1 << 30:
                break
    assert sim.counters().bytes_served < 1 << 30


@pytest.mark.parametrize("after_bytes", [None, 1000, 0])
def test_drop_connection_on_media(
    after_bytes: int | None, sim: RelaySimulator, api: httpx.Client
) -> None:
    links = completed_links(sim, api)
    content = media_file("video.mp4")[0]
    sim.add_fault(
        Fault(FaultKind.DROP_CONNECTION, generation_id=links["id"], after_bytes=after_bytes)
    )
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", links["video"]) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-length"] == str(len(content))
        for chunk in answer.iter_raw():
            received += chunk
    expected = len(content) // 2 if after_bytes is None else after_bytes
    assert bytes(received) == content[:expected]
    assert sim.counters().bytes_served == expected


def test_drop_connection_on_synthetic_range(sim: RelaySimulator) -> None:
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("media",), after_bytes=MiB + 5, times=1))
    url = f"{sim.base_url}/cdn/synthetic/big.mp4?size={8 * MiB}"
    received = bytearray()
    ranged = {"Range": f"bytes={MiB}-"}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("GET", url, headers=ranged) as answer,
    ):
        assert answer.status_code == 206
        for chunk in answer.iter_raw():
            received += chunk
    assert bytes(received) == synthetic_bytes(MiB, MiB + 5)
    resumed = httpx.get(url, headers={"Range": f"bytes={2 * MiB + 5}-{3 * MiB}"})
    assert resumed.content == synthetic_bytes(2 * MiB + 5, MiB - 4)


def test_server_error_and_slow_on_media(sim: RelaySimulator, api: httpx.Client) -> None:
    links = completed_links(sim, api)
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=502, routes=("media",), times=1))
    assert httpx.get(links["video"]).status_code == 502
    assert httpx.get(links["video"]).status_code == 200
    sim.add_fault(Fault(FaultKind.RATE_LIMIT, times=1))
    assert httpx.get(links["video"]).status_code == 200
    assert sim.faults()[0]["remaining"] == 1


def test_parse_range_edges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=x-4", 10) is None
    assert parse_range("bytes=", 10) is None
    assert parse_range("bytes=5", 10) is None
