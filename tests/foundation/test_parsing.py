"""Parsing every relay shape: the shared fixtures, wrappers, batch answers and error bodies."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import respx

from luma_prefect import (
    Generation,
    GenerationState,
    LumaAuthError,
    LumaClient,
    LumaNotFoundError,
    LumaProtocolError,
    parse_generation,
)
from luma_prefect.relay._answers import read_body
from luma_prefect.relay._parsing import error_info, parse_generations
from tests.conftest import RELAY_FIXTURES as FIXTURES_DIR

CDN = "https://storage.cdn-luma.com/dream-machine/b0d67582-c6f0-4973-a89c-3fea9d46d5e9"
VIDEO = f"{CDN}/35049450-c008-4607-b1d0-0b025599f15d/video0b6619468da8e409da860706bbf26bbad.mp4"
LAST_FRAME = f"{CDN}/606108d9-9daf-4265-84fb-595f18240ac5/video_0_last_frame.jpg"
THUMBNAIL = (
    "https://imagedelivery.net/1KomXrSWiTojGGip43n0SQ/e4268de5-4a74-45ff-67b8-dc46df12de00/public"
)
COMPLETED_ID = "4665a07c-7641-4809-a133-10786201bb56"

# What each generation fixture must parse to. Keys of Generation, plus dotted asset URLs.
COMPLETED_RELAY = {
    "id": COMPLETED_ID,
    "state": GenerationState.COMPLETED,
    "raw_state": "completed",
    "prompt": "cat dance",
    "aspect_ratio": "16:9",
    "created_at": datetime(2024, 12, 22, 13, 38, 40, 139000, timezone.utc),
    "video.url": VIDEO,
    "video.download_url": VIDEO,
    "video.width": 1360,
    "video.height": 752,
    "video_raw.url": VIDEO,
    "video_raw.duration": 5.041667,
    "thumbnail.url": THUMBNAIL,
    "last_frame.url": LAST_FRAME,
}
NO_ASSETS = {"video": None, "video_raw": None, "thumbnail": None, "last_frame": None}

GENERATION_FIXTURES: dict[str, dict[str, Any]] = {
    "relay-generation-completed.json": COMPLETED_RELAY,
    "relay-batch-bare-array.json": COMPLETED_RELAY,
    "relay-generation-pending.json": {
        "id": COMPLETED_ID,
        "state": GenerationState.PENDING,
        "raw_state": "pending",
        "prompt": None,  # "" in the body: no prompt
        **NO_ASSETS,
    },
    "relay-submit-response-2024-07.json": {
        "id": "fc7fb008-7a5e-40ad-a7ff-dbb63db61be8",
        "state": GenerationState.PENDING,
        "raw_state": "pending",
        "prompt": "cat dance",
        "created_at": datetime(2024, 7, 22, 12, 47, 28, 553735, timezone.utc),
        **NO_ASSETS,
    },
    "relay-batch-task-wrapper.json": {
        "id": "9d4b7516-77e5-481a-b015-48313946f33b",
        "state": GenerationState.PROCESSING,
        "raw_state": "processing",
        "prompt": "cat dance",
        "failure_reason": None,  # "" in the body
        **NO_ASSETS,
    },
    "task-wrapper-completed.json": {
        "id": "9ec64da6-daa0-43f1-b7ee-9875eeb5bd34",
        "state": GenerationState.COMPLETED,
        "raw_state": "completed",
        "prompt": "move",
        "video.url": "https://filesystem.site/cdn/20240705/mla6YIE26rF8S2aH8le7kuaYZDeWiX.mp4",
        "video.download_url": None,
        "video.width": 512,
        "thumbnail": None,
        "video_raw": None,
    },
    "official-generation-completed.json": {
        "id": "123e4567-e89b-12d3-a456-426614174000",
        "state": GenerationState.COMPLETED,
        "raw_state": "completed",
        "prompt": "A serene lake surrounded by mountains at sunset",
        "aspect_ratio": "16:9",
        "video.url": "https://example.com/video.mp4",
        "thumbnail.url": "https://example.com/thumb.jpg",
        "failure_reason": None,
    },
    "official-generation-failed.json": {
        "id": "0b1c2d3e-4f50-4617-8899-aabbccddeeff",
        "state": GenerationState.FAILED,
        "raw_state": "failed",
        "failure_reason": "Frame moderation failed",
        **NO_ASSETS,
    },
    "official-generation-queued.json": {
        "id": "7ca76429-99d1-46ab-bb2e-84baa4acdb04",
        "state": GenerationState.PENDING,
        "raw_state": "queued",
        "prompt": "A serene lake surrounded by mountains at sunset",
        **NO_ASSETS,
    },
}
OTHER_FIXTURES = {"relay-download-video-url.json", "error-bodies.json"}


def lookup(generation: Generation, dotted: str) -> Any:
    """`video.url` -> generation.video.url (None if the asset is missing)."""
    value: Any = generation
    for part in dotted.split("."):
        value = getattr(value, part) if value is not None else None
    return value


def raw_object(body: Any) -> Any:
    """The relay's own object inside a fixture body, as `raw` must keep it."""
    if isinstance(body, dict) and "code" in body and "data" in body:
        body = body["data"]
    return body[0] if isinstance(body, list) else body


# --- the shared fixtures -----------------------------------------------------------------------


def test_every_fixture_file_is_covered_by_these_tests():
    """A fixture added to tests/fixtures/relay must get expectations here too."""
    present = {path.name for path in FIXTURES_DIR.glob("*.json")}
    assert present, f"no fixtures found in {FIXTURES_DIR}"
    assert present == set(GENERATION_FIXTURES) | OTHER_FIXTURES


@pytest.mark.parametrize("name", sorted(GENERATION_FIXTURES))
def test_generation_fixture_parses_to_the_expected_fields(name: str, load_fixture):
    """Each generation fixture gives one generation with the right id, state and assets."""
    body = load_fixture(name)
    generations = parse_generations(body)
    assert len(generations) == 1
    generation = generations[0]
    for field, expected in GENERATION_FIXTURES[name].items():
        assert lookup(generation, field) == expected, field


@pytest.mark.parametrize("name", sorted(GENERATION_FIXTURES))
def test_raw_keeps_the_relay_object_unchanged(name: str, load_fixture):
    """`raw` is the relay's object as sent, and parsing does not modify the body."""
    body = load_fixture(name)
    untouched = copy.deepcopy(body)
    generation = parse_generations(body)[0]
    assert body == untouched
    assert generation.raw == raw_object(untouched)


@pytest.mark.parametrize("name", sorted(GENERATION_FIXTURES))
def test_parse_generation_agrees_with_parse_generations(name: str, load_fixture):
    """`parse_generation` takes any one-generation shape, including `[obj]` and wrappers."""
    body = load_fixture(name)
    assert parse_generation(body) == parse_generations(body)[0]


def test_zero_time_in_artifact_does_not_replace_created_at(load_fixture):
    """`artifact.created_at` is the Go zero time; the top-level time wins."""
    generation = parse_generation(load_fixture("relay-generation-completed.json"))
    assert generation.created_at is not None
    assert generation.created_at.year == 2024


def test_task_batch_entry_raw_state_without_inner_state(load_fixture):
    """Outer status words are kept when the inner object has none."""
    body = load_fixture("relay-batch-task-wrapper.json")
    body["data"][0]["data"] = None
    generation = parse_generation(body)
    assert generation.state is GenerationState.PROCESSING
    assert generation.raw_state == "IN_PROGRESS"


async def test_download_url_fixture_through_the_client(load_fixture):
    """`relay-download-video-url.json` is read by the client's get_download_url."""
    body = load_fixture("relay-download-video-url.json")
    with respx.mock(base_url="https://relay.example") as router:
        route = router.get(f"/luma/generations/{COMPLETED_ID}/download_video_url").respond(
            200, json=body
        )
        async with LumaClient("https://relay.example", "sk-test") as client:
            assert await client.get_download_url(COMPLETED_ID) == body["url"]
    assert route.call_count == 1


async def test_download_url_in_a_task_wrapper():
    """The same link wrapped as `{"code": "success", "data": {"url": ...}}` is read too."""
    with respx.mock(base_url="https://relay.example") as router:
        router.get(f"/luma/generations/{COMPLETED_ID}/download_video_url").respond(
            200, json={"code": "success", "message": "", "data": {"url": "https://x/v.mp4"}}
        )
        async with LumaClient("https://relay.example", "sk-test") as client:
            assert await client.get_download_url(COMPLETED_ID) == "https://x/v.mp4"


async def test_download_url_missing_is_a_protocol_error():
    """An answer without a link is an error naming the generation, not an empty string."""
    with respx.mock(base_url="https://relay.example") as router:
        router.get(f"/luma/generations/{COMPLETED_ID}/download_video_url").respond(
            200, json={"url": ""}
        )
        async with LumaClient("https://relay.example", "sk-test") as client:
            with pytest.raises(LumaProtocolError, match=COMPLETED_ID):
                await client.get_download_url(COMPLETED_ID)


# --- shapes ------------------------------------------------------------------------------------

MINIMAL = {"id": "g-1", "state": "dreaming", "video": {"url": "https://x/v.mp4"}}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(MINIMAL, id="bare object"),
        pytest.param([MINIMAL], id="one-element array"),
        pytest.param({"code": "success", "message": "", "data": MINIMAL}, id="code wrapper"),
        pytest.param({"code": "success", "message": "", "data": [MINIMAL]}, id="wrapped array"),
    ],
)
def test_each_shape_of_one_generation(body: Any):
    """Bare, `[obj]` and `{code, message, data}` all give the same generation."""
    generation = parse_generation(body)
    assert generation.id == "g-1"
    assert generation.state is GenerationState.PROCESSING
    assert generation.raw_state == "dreaming"
    assert generation.video is not None
    assert generation.video.url == "https://x/v.mp4"
    assert generation.raw == MINIMAL


def test_batch_array_keeps_the_relay_order():
    """Several generations come back in the order the relay gave them."""
    body = [{"id": f"g-{n}", "state": "pending"} for n in (3, 1, 2)]
    assert [g.id for g in parse_generations(body)] == ["g-3", "g-1", "g-2"]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("NOT_START", GenerationState.PENDING),
        ("SUBMITTED", GenerationState.PENDING),
        ("QUEUED", GenerationState.PENDING),
        ("IN_PROGRESS", GenerationState.PROCESSING),
        ("SUCCESS", GenerationState.COMPLETED),
        ("FAILURE", GenerationState.FAILED),
        ("UNKNOWN", GenerationState.UNKNOWN),
    ],
)
def test_batch_task_entry_with_null_inner_data(status: str, state: GenerationState):
    """A task-wrapper entry without Luma's object: id from task_id, state from status."""
    body = {
        "code": "success",
        "message": "",
        "data": [
            {"task_id": "t-1", "status": status, "fail_reason": "", "submit_time": 0, "data": None}
        ],
    }
    generation = parse_generation(body)
    assert generation.id == "t-1"
    assert generation.state is state
    assert generation.raw_state == status
    assert generation.failure_reason is None
    assert generation.raw == body["data"][0]


def test_batch_task_entry_fail_reason_becomes_failure_reason():
    """`fail_reason` of a FAILURE entry is the generation's failure_reason."""
    entry = {"task_id": "t-2", "status": "FAILURE", "fail_reason": "nsfw prompt", "data": None}
    generation = parse_generation({"code": "success", "message": "", "data": [entry]})
    assert generation.state is GenerationState.FAILED
    assert generation.failure_reason == "nsfw prompt"


def test_batch_task_entry_terminal_status_wins_over_a_lagging_inner_state():
    """The relay's SUCCESS/FAILURE is final even when Luma's object still says processing."""
    entry = {
        "task_id": "t-3",
        "status": "FAILURE",
        "fail_reason": "upstream error",
        "data": {"id": "t-3", "state": "processing"},
    }
    generation = parse_generation({"code": "success", "message": "", "data": [entry]})
    assert generation.state is GenerationState.FAILED
    assert generation.raw_state == "FAILURE"


def test_batch_task_entry_submit_time_is_the_creation_time_when_inner_has_none():
    """Unix `submit_time` stands in for a missing `created_at`."""
    entry = {"task_id": "t-4", "status": "NOT_START", "submit_time": 1719819313, "data": None}
    generation = parse_generation([entry])
    assert generation.created_at == datetime.fromtimestamp(1719819313, timezone.utc)


def test_batch_task_wrapper_with_several_entries_keeps_order_and_ids():
    """A task wrapper of several entries gives each one, in order, by inner id or task_id."""
    body = {
        "code": "success",
        "message": "",
        "data": [
            {"task_id": "a", "status": "SUCCESS", "data": {"id": "a", "state": "completed"}},
            {"task_id": "b", "status": "NOT_START", "data": None},
        ],
    }
    generations = parse_generations(body)
    assert [(g.id, g.state) for g in generations] == [
        ("a", GenerationState.COMPLETED),
        ("b", GenerationState.PENDING),
    ]


@pytest.mark.parametrize("assets", [None, {}, {"video": None, "image": ""}])
def test_official_without_assets(assets: Any):
    """Official objects with `assets` null or empty have no assets, and do not crash."""
    generation = parse_generation({"id": "o-1", "state": "dreaming", "assets": assets})
    assert generation.state is GenerationState.PROCESSING
    assert generation.video is None
    assert generation.thumbnail is None


def test_relay_object_assets_fall_back_to_artifact():
    """A relay that only fills `artifact` still yields the assets."""
    generation = parse_generation(
        {
            "id": "r-1",
            "state": "completed",
            "video": None,
            "artifact": {
                "video": {"url": "https://x/v.mp4", "download_url": "https://x/dl.mp4"},
                "last_frame": {"url": "https://x/last.jpg"},
            },
        }
    )
    assert lookup(generation, "video.download_url") == "https://x/dl.mp4"
    assert lookup(generation, "last_frame.url") == "https://x/last.jpg"


def test_asset_without_any_url_is_none():
    """An asset object with no link at all is no asset."""
    generation = parse_generation({"id": "r-2", "state": "completed", "video": {"width": 1}})
    assert generation.video is None


def test_extra_and_odd_fields_do_not_break_parsing():
    """Unknown fields, odd types and nulls are tolerated (and kept in raw)."""
    body = {
        "id": "r-3",
        "state": "SUCCESS",
        "created_at": 0,
        "estimate_wait_seconds": "soon",
        "request": None,
        "video": {"url": "https://x/v.mp4", "width": "1,360", "height": None},
        "brand_new_field": {"nested": [1, 2]},
    }
    generation = parse_generation(body)
    assert generation.state is GenerationState.COMPLETED
    assert generation.created_at is None
    assert generation.estimate_wait_seconds is None
    assert generation.video is not None
    assert generation.video.width is None
    assert generation.raw["brand_new_field"] == {"nested": [1, 2]}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="null"),
        pytest.param("<html>Bad gateway</html>", id="text"),
        pytest.param(42, id="number"),
        pytest.param([1, 2], id="array of numbers"),
        pytest.param({"url": "https://x/v.mp4"}, id="download link"),
        pytest.param({"detail": "Invalid API key is provided"}, id="detail error"),
        pytest.param({"error": {"message": "bad", "type": "new_api_error"}}, id="error object"),
        pytest.param({"code": "task_not_exist", "message": "x", "data": None}, id="task error"),
        pytest.param({"id": "", "state": "pending"}, id="empty id"),
    ],
)
def test_non_generation_bodies_are_protocol_errors(body: Any):
    """A body with no generation in it is a LumaProtocolError, never a half-empty Generation."""
    with pytest.raises(LumaProtocolError):
        parse_generations(body)


@pytest.mark.parametrize("body", [[], [MINIMAL, MINIMAL]])
def test_parse_generation_needs_exactly_one(body: Any):
    """`parse_generation` refuses an empty answer and one with several generations."""
    with pytest.raises(LumaProtocolError, match="Expected one generation"):
        parse_generation(body)


# --- error bodies ------------------------------------------------------------------------------

# (message, code, request id) each entry of error-bodies.json must give.
ERROR_BODY_EXPECTATIONS = {
    "new-api gateway (401/403/429/503)": (
        "无效的令牌 (request id: 20241222133840123456789)",
        "new_api_error",
        "20241222133840123456789",
    ),
    "new-api task route (task_not_exist is HTTP 400)": ("task_not_exist", "task_not_exist", None),
    "self-hosted relay": ("unauthorized secret token", "1", None),
    "official API / upstream passthrough": ("Invalid API key is provided", None, None),
}
# The HTTP status each body comes with, and the error it must become.
ERROR_BODY_STATUS = {
    "new-api gateway (401/403/429/503)": (401, LumaAuthError),
    "new-api task route (task_not_exist is HTTP 400)": (400, LumaNotFoundError),
    "self-hosted relay": (401, LumaAuthError),
    "official API / upstream passthrough": (403, LumaAuthError),
}


def test_every_error_body_is_covered(load_fixture):
    """Each error shape in error-bodies.json has expectations here."""
    assert set(load_fixture("error-bodies.json")) == set(ERROR_BODY_EXPECTATIONS)


@pytest.mark.parametrize("shape", sorted(ERROR_BODY_EXPECTATIONS))
def test_error_info_reads_each_error_shape(shape: str, load_fixture):
    """The relay's message, code and request id are found in every error shape."""
    info = error_info(load_fixture("error-bodies.json")[shape], httpx.Headers())
    assert (info.message, info.code, info.request_id) == ERROR_BODY_EXPECTATIONS[shape]


@pytest.mark.parametrize("shape", sorted(ERROR_BODY_STATUS))
def test_each_error_body_maps_to_its_error_class(shape: str, load_fixture):
    """With the status it comes with, each error body raises the right class and message."""
    status, error_class = ERROR_BODY_STATUS[shape]
    body = load_fixture("error-bodies.json")[shape]
    response = httpx.Response(
        status, content=json.dumps(body).encode(), request=httpx.Request("GET", "https://x/")
    )
    with pytest.raises(error_class) as caught:
        read_body(response, "Querying generation g-1", "g-1")
    expected_message = ERROR_BODY_EXPECTATIONS[shape][0]
    assert caught.value.relay_message == expected_message
    assert expected_message in str(caught.value)
    assert caught.value.status_code == status
    assert caught.value.generation_id == "g-1"


def test_request_id_header_wins_and_is_read_case_insensitively():
    """A request id header is used; the message text is the fallback."""
    info = error_info({"error": {"message": "x (request id: from-text)"}}, httpx.Headers())
    assert info.request_id == "from-text"
    info = error_info({"detail": "boom"}, httpx.Headers({"X-Request-Id": "req-42"}))
    assert info.request_id == "req-42"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": "plain string error"}, "plain string error"),
        ({"message": "msg only"}, "msg only"),
        ({"msg": "short msg"}, "short msg"),
        ({"detail": {"message": "nested message"}}, "nested message"),
        ("  gateway text  ", "gateway text"),
        ({}, None),
        (None, None),
    ],
)
def test_error_info_other_shapes(body: Any, message: str | None):
    """Less common error shapes still give the relay's words (or None, never a crash)."""
    assert error_info(body, httpx.Headers()).message == message


def test_malformed_parts_of_an_object_are_left_out_not_fatal() -> None:
    """A url that is a number, or a failure_reason that is an object, keep the generation."""
    generation = parse_generation(
        {
            "id": "abc",
            "state": "failed",
            "video": {"url": 123},
            "thumbnail": {"url": "https://cdn.example/t.jpg", "width": "wide"},
            "failure_reason": {"code": 7, "detail": "moderation"},
        }
    )
    assert generation.video is None
    assert generation.thumbnail is not None and generation.thumbnail.width is None
    assert generation.failure_reason is not None and "moderation" in generation.failure_reason


def test_one_unparseable_object_in_a_batch_does_not_hide_the_others() -> None:
    generations = parse_generations([{"id": "a", "state": "pending"}, {"no": "id"}, "x"])
    assert [g.id for g in generations] == ["a"]
