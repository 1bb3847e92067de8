"""Each relay style end to end over loopback HTTP, answers checked against the fixtures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from luma_prefect.simulator import RelaySimulator
from luma_prefect.simulator._media import media_file

NESTED = ("video", "video_raw", "thumbnail", "last_frame", "artifact")


def keys(obj: Any) -> set[str]:
    assert isinstance(obj, dict), obj
    return set(obj)


def assert_like_completed(obj: dict[str, Any], expected: dict[str, Any]) -> None:
    assert keys(expected) <= keys(obj)
    for name in NESTED:
        assert keys(obj[name]) == keys(expected[name]), name
    for name in ("video", "thumbnail", "video_raw", "last_frame"):
        assert keys(obj["artifact"][name]) == keys(expected["artifact"][name]), name
    assert obj["artifact"]["created_at"] == "0001-01-01T00:00:00Z"
    assert obj["estimate_wait_seconds"] is None
    assert obj["failure_reason"] is None


def test_generations_style_end_to_end(
    sim: RelaySimulator, api: httpx.Client, load_fixture: Callable[[str], Any]
) -> None:
    submitted = api.post("/luma/generations", json={"user_prompt": "cat dance"})
    assert submitted.status_code == 200
    created = submitted.json()
    pending_fixture = load_fixture("relay-generation-pending.json")
    assert keys(pending_fixture) <= keys(created)
    assert created["state"] == "pending" and created["video"] is None
    assert created["prompt"] == "cat dance"
    assert created["request"] == {"prompt": "cat dance", "aspect_ratio": "16:9"}
    assert isinstance(created["estimate_wait_seconds"], int)
    gid = created["id"]

    assert api.get(f"/luma/generations/{gid}").json()["state"] == "pending"
    sim.advance(1.0)
    assert api.get(f"/luma/generations/{gid}").json()["state"] == "processing"
    sim.advance(2.0)
    done = api.get(f"/luma/generations/{gid}").json()
    assert done["state"] == "completed"
    assert_like_completed(done, load_fixture("relay-generation-completed.json"))
    assert (done["video"]["width"], done["video"]["height"]) == (1360, 752)
    assert done["video_raw"]["media_type"] == "video"

    video = httpx.get(done["video"]["download_url"])
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.content == media_file("video.mp4")[0]
    assert video.content[4:8] == b"ftyp"
    thumb = httpx.get(done["thumbnail"]["url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    assert sim.generation(gid) == done


def test_batch_bare_array(
    sim: RelaySimulator, api: httpx.Client, load_fixture: Callable[[str], Any]
) -> None:
    done = sim.create_generation(prompt="a", state="completed")
    pending = sim.create_generation(prompt="b", state="pending")
    answer = api.post("/luma/tasks", json={"ids": [pending, "no-such-id", done]})
    assert answer.status_code == 200
    items = answer.json()
    assert isinstance(items, list)
    assert [item["id"] for item in items] == [pending, done]
    assert_like_completed(items[1], load_fixture("relay-batch-bare-array.json")[0])
    assert items[0]["state"] == "pending"


def test_batch_task_wrapper(
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[..., httpx.Client],
    load_fixture: Callable[[str], Any],
) -> None:
    sim = sim_factory(batch_shape="task_wrapper")
    states = ["pending", "processing", "completed", "failed"]
    ids = [sim.create_generation(prompt=s, state=s) for s in states]
    answer = client_for(sim).post("/luma/tasks", json={"ids": [*ids, "unknown"]}).json()
    expected = load_fixture("relay-batch-task-wrapper.json")
    assert keys(answer) == keys(expected)
    assert answer["code"] == "success" and answer["message"] == ""
    items = answer["data"]
    assert [item["task_id"] for item in items] == ids
    for item in items:
        assert keys(expected["data"][0]) | {"progress"} == keys(item)
        assert item["data"]["id"] == item["task_id"]
    assert [item["status"] for item in items] == ["SUBMITTED", "IN_PROGRESS", "SUCCESS", "FAILURE"]
    assert items[2]["progress"] == "100%" and items[2]["finish_time"] > 0
    assert items[0]["start_time"] == 0 and items[0]["finish_time"] == 0
    assert items[3]["fail_reason"] == "Frame moderation failed"
    assert items[2]["data"]["video"]["download_url"]


def test_extend(sim: RelaySimulator, api: httpx.Client) -> None:
    source = sim.create_generation(prompt="a fox", state="completed")
    unfinished = sim.create_generation(prompt="a cat", state="processing")
    assert api.post("/luma/generations/nope/extend", json={}).status_code == 404
    refused = api.post(f"/luma/generations/{unfinished}/extend", json={"user_prompt": "x"})
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "new_api_error"
    extended = api.post(f"/luma/generations/{source}/extend", json={"user_prompt": "more fox"})
    assert extended.status_code == 200
    new = extended.json()
    assert new["id"] != source and new["state"] == "pending"
    counters = sim.counters()
    assert counters.submits_accepted == 1
    assert counters.submits_by_prompt == {"more fox": 1}
    assert counters.requests["extend"] == 3


def test_download_video_url(
    sim: RelaySimulator, api: httpx.Client, load_fixture: Callable[[str], Any]
) -> None:
    pending = sim.create_generation(prompt="p", state="pending")
    early = api.get(f"/luma/generations/{pending}/download_video_url")
    assert early.status_code == 400
    assert "error" in early.json()
    assert api.get("/luma/generations/nope/download_video_url").status_code == 404
    done = sim.create_generation(prompt="d", state="completed")
    link = api.get(f"/luma/generations/{done}/download_video_url")
    assert link.status_code == 200
    assert keys(link.json()) == keys(load_fixture("relay-download-video-url.json"))
    assert httpx.get(link.json()["url"]).content == media_file("video.mp4")[0]
    assert sim.counters().requests["download_url"] == 3


def test_submit_validation(sim: RelaySimulator, api: httpx.Client) -> None:
    for body in ({}, {"user_prompt": "  "}, {"user_prompt": "x", "aspect_ratio": "5:4"}):
        answer = api.post("/luma/generations", json=body)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["type"] == "new_api_error"
    garbage = api.post("/luma/generations", content=b"{not json")
    assert garbage.status_code == 400
    image_only = api.post(
        "/luma/generations",
        json={"image_url": "https://example.com/a.jpg", "aspect_ratio": "9:16", "loop": True},
    )
    assert image_only.status_code == 200
    assert image_only.json()["request"]["aspect_ratio"] == "9:16"
    assert sim.counters().submits_accepted == 1
    sim.advance(60)
    done = sim.generation(image_only.json()["id"])
    assert (done["video"]["width"], done["video"]["height"]) == (752, 1360)


def test_submit_shape_array(
    sim_factory: Callable[..., RelaySimulator], client_for: Callable[..., httpx.Client]
) -> None:
    sim = sim_factory(submit_shape="array", with_video_raw=False)
    api = client_for(sim)
    answer = api.post("/luma/generations", json={"user_prompt": "cat"}).json()
    assert isinstance(answer, list) and len(answer) == 1
    sim.advance(10)
    done = api.get(f"/luma/generations/{answer[0]['id']}").json()
    assert done["video_raw"] is None and done["artifact"]["video_raw"] is None
    assert done["video"]["download_url"]


def test_route_prefix(
    sim_factory: Callable[..., RelaySimulator], client_for: Callable[..., httpx.Client]
) -> None:
    sim = sim_factory(route_prefix="pro/luma/")
    assert sim.route_prefix == "/pro/luma"
    api = client_for(sim)
    assert api.post("/pro/luma/generations", json={"user_prompt": "x"}).status_code == 200
    wrong = api.post("/luma/generations", json={"user_prompt": "x"})
    assert wrong.status_code == 404
    assert "Invalid URL" in wrong.json()["error"]["message"]
    assert sim.counters().submits_accepted == 1


def test_unknown_generation_is_404_in_new_api_shape(api: httpx.Client) -> None:
    answer = api.get("/luma/generations/4665a07c-7641-4809-a133-10786201bb56")
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["type"] == "new_api_error"
    assert answer.headers["x-request-id"] in error["message"]


def test_task_style_end_to_end(
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[..., httpx.Client],
    load_fixture: Callable[[str], Any],
) -> None:
    sim = sim_factory(style="task")
    api = client_for(sim)
    expected = load_fixture("task-wrapper-completed.json")
    submitted = api.post("/luma/generations", json={"user_prompt": "move"})
    assert submitted.status_code == 200
    wrapper = submitted.json()
    assert keys(wrapper) == keys(expected) and wrapper["code"] == "success"
    gid = wrapper["data"]["id"]
    assert wrapper["data"]["state"] == "pending" and wrapper["data"]["video"] is None

    sim.advance(1.5)
    polled = api.get("/luma/task", params={"id": gid}).json()
    assert polled["data"]["state"] == "processing"
    sim.advance(2)
    done = api.get("/luma/task", params={"id": gid}).json()
    assert keys(expected["data"]) <= keys(done["data"])
    assert keys(done["data"]["video"]) == keys(expected["data"]["video"])
    assert done["data"]["state"] == "completed"
    assert httpx.get(done["data"]["video"]["url"]).content == media_file("video.mp4")[0]
    assert sim.generation(gid) == done["data"]

    missing = api.get("/luma/task", params={"id": "nope"})
    assert missing.status_code == 400
    assert missing.json() == {"code": "task_not_exist", "message": "task_not_exist", "data": None}
    assert api.post("/luma/tasks", json={"ids": [gid]}).status_code == 404
    assert api.get(f"/luma/generations/{gid}").status_code in (404, 405)

    extended = api.post(f"/luma/generations/{gid}/extend", json={"user_prompt": "more"})
    assert extended.json()["code"] == "success" and extended.json()["data"]["id"] != gid
    link = api.get(f"/luma/generations/{gid}/download_video_url").json()
    assert link["code"] == "success" and link["data"]["url"].startswith(sim.base_url)
    bad = api.post("/luma/generations", json={"aspect_ratio": "16:9"})
    assert bad.status_code == 400 and bad.json()["data"] is None


def test_official_style_end_to_end(
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[..., httpx.Client],
    load_fixture: Callable[[str], Any],
) -> None:
    sim = sim_factory(style="official")
    api = client_for(sim)
    root = "/dream-machine/v1/generations"
    body = {
        "prompt": "A serene lake",
        "aspect_ratio": "16:9",
        "loop": True,
        "callback_url": "https://example.com/luma-callback",
    }
    submitted = api.post(root, json=body)
    assert submitted.status_code == 201
    created = submitted.json()
    assert keys(load_fixture("official-generation-queued.json")) <= keys(created)
    assert created["state"] == "queued" and created["assets"] is None
    assert created["request"]["callback_url"] == body["callback_url"]
    gid = created["id"]
    sim.advance(1.5)
    assert api.get(f"{root}/{gid}").json()["state"] == "dreaming"
    sim.advance(2)
    done = api.get(f"{root}/{gid}").json()
    completed_fixture = load_fixture("official-generation-completed.json")
    assert keys(completed_fixture) <= keys(done)
    assert keys(done["assets"]) == keys(completed_fixture["assets"])
    assert done["state"] == "completed" and done["model"] == "ray-2"
    assert httpx.get(done["assets"]["video"]).content == media_file("video.mp4")[0]

    assert api.get(f"{root}/nope").status_code == 404
    assert api.get(f"{root}/nope").json() == {"detail": "Generation not found"}

    failed_id = sim.create_generation(prompt="something", state="failed")
    failed = api.get(f"{root}/{failed_id}").json()
    assert keys(load_fixture("official-generation-failed.json")) <= keys(failed)
    assert failed["state"] == "failed" and failed["failure_reason"] == "Frame moderation failed"

    keyframe = {"frame0": {"type": "generation", "id": gid}}
    extended = api.post(root, json={"prompt": "more", "keyframes": keyframe})
    assert extended.status_code == 201
    assert extended.json()["request"]["keyframes"] == keyframe
    pending = extended.json()["id"]
    refused = api.post(root, json={"keyframes": {"frame0": {"type": "generation", "id": pending}}})
    assert refused.status_code == 400 and "detail" in refused.json()
    assert api.post(root, json={"aspect_ratio": "16:9"}).status_code == 400
    bad_frames = api.post(root, json={"prompt": "x", "keyframes": {"frame0": {"type": "video"}}})
    assert bad_frames.status_code == 400
    image = {"frame0": {"type": "image", "url": "https://example.com/a.jpg"}}
    assert api.post(root, json={"keyframes": image, "model": "ray-flash-2"}).status_code == 201
    assert sim.counters().submits_accepted == 3
    assert sim.counters().requests["submit"] == 6


@pytest.mark.parametrize("style", ["generations", "task", "official"])
def test_auth_401_shapes(
    style: str,
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[..., httpx.Client],
    load_fixture: Callable[[str], Any],
) -> None:
    sim = sim_factory(style=style, api_key="sk-right")
    assert sim.api_key == "sk-right"
    path = "/dream-machine/v1/generations" if style == "official" else "/luma/generations"
    errors = load_fixture("error-bodies.json")
    for client in (client_for(sim, "sk-wrong"), httpx.Client(base_url=sim.base_url)):
        with client:
            answer = client.post(path, json={"user_prompt": "x", "prompt": "x"})
        assert answer.status_code == 401
        assert answer.headers["x-request-id"]
        if style == "official":
            assert answer.json() == errors["official API / upstream passthrough"]
        else:
            error = answer.json()["error"]
            assert keys(error) == keys(errors["new-api gateway (401/403/429/503)"]["error"])
            assert error["type"] == "new_api_error"
            assert error["message"] == f"无效的令牌 (request id: {answer.headers['x-request-id']})"
    assert sim.counters().submits_accepted == 0
    assert sim.counters().requests["submit"] == 2


def test_generated_keys_are_random() -> None:
    first, second = RelaySimulator(), RelaySimulator()
    assert first.api_key.startswith("sk-sim-") and first.api_key != second.api_key
    assert first.config.api_key == first.api_key
