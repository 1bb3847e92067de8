"""LumaClient against a mocked relay: routes, headers, batch queries, errors and retries."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx

from luma_prefect import (
    GenerationRequest,
    GenerationState,
    LumaAuthError,
    LumaClient,
    LumaConfigurationError,
    LumaError,
    LumaHTTPError,
    LumaNotFoundError,
    LumaProtocolError,
    LumaRateLimitError,
    LumaRequestError,
    LumaServerError,
    LumaSubmitUncertainError,
    LumaTransportError,
    RetryPolicy,
)

BASE_URL = "https://relay.example"
API_KEY = "sk-SECRET-123"
GID = "4665a07c-7641-4809-a133-10786201bb56"
OFFICIAL = "/dream-machine/v1/generations"
REQUEST = GenerationRequest(prompt="cat dance", image_url="https://x/start.jpg")
NO_RETRY = RetryPolicy(max_retries=0)


def generation(gid: str = GID, state: str = "completed", **extra: Any) -> dict[str, Any]:
    """A relay generation object (style `generations`)."""
    return {"id": gid, "state": state, "video": {"url": f"https://cdn.example/{gid}.mp4"}, **extra}


def wrapped(data: Any) -> dict[str, Any]:
    """The `{code, message, data}` wrapper of the task style."""
    return {"code": "success", "message": "", "data": data}


def ids_sent(request: httpx.Request) -> list[str]:
    return json.loads(request.content)["ids"]


# --- routes of each style ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/luma", "/pro/luma"])
class TestGenerationsStyleRoutes:
    """Style `generations`: every route lives under the route prefix."""

    async def test_submit_posts_the_relay_body(self, relay, make_client, prefix):
        """POST {prefix}/generations with the relay-style body; the answer is parsed."""
        route = relay.post(f"{prefix}/generations").respond(201, json=generation(state="pending"))
        result = await make_client(route_prefix=prefix).submit_generation(REQUEST)
        assert route.call_count == 1
        assert json.loads(route.calls.last.request.content) == REQUEST.to_wire("generations")
        assert (result.id, result.state) == (GID, GenerationState.PENDING)

    async def test_query_one(self, relay, make_client, prefix):
        """GET {prefix}/generations/{id}."""
        route = relay.get(f"{prefix}/generations/{GID}").respond(200, json=generation())
        result = await make_client(route_prefix=prefix).get_generation(GID)
        assert route.call_count == 1
        assert result.state is GenerationState.COMPLETED

    async def test_query_many(self, relay, make_client, prefix):
        """POST {prefix}/tasks with body {"ids": [...]}."""
        route = relay.post(f"{prefix}/tasks").respond(200, json=[generation("a"), generation("b")])
        result = await make_client(route_prefix=prefix).get_generations(["a", "b"])
        assert route.call_count == 1
        assert ids_sent(route.calls.last.request) == ["a", "b"]
        assert [g.id for g in result] == ["a", "b"]

    async def test_extend(self, relay, make_client, prefix):
        """POST {prefix}/generations/{id}/extend with the submit body."""
        route = relay.post(f"{prefix}/generations/{GID}/extend").respond(
            200, json=generation("new-1", "pending")
        )
        result = await make_client(route_prefix=prefix).extend_generation(GID, REQUEST)
        assert json.loads(route.calls.last.request.content) == REQUEST.to_wire("generations")
        assert result.id == "new-1"

    async def test_download_url(self, relay, make_client, prefix):
        """GET {prefix}/generations/{id}/download_video_url answers {"url": ...}."""
        route = relay.get(f"{prefix}/generations/{GID}/download_video_url").respond(
            200, json={"url": "https://cdn.example/raw.mp4"}
        )
        assert await make_client(route_prefix=prefix).get_download_url(GID) == (
            "https://cdn.example/raw.mp4"
        )
        assert route.call_count == 1


@pytest.mark.parametrize("prefix", ["/luma", "/pro/luma"])
class TestTaskStyleRoutes:
    """Style `task`: submit as usual, query with GET {prefix}/task?id=, wrapped answers."""

    async def test_submit(self, relay, make_client, prefix):
        """POST {prefix}/generations, answer wrapped in {code, data}."""
        route = relay.post(f"{prefix}/generations").respond(
            200, json=wrapped(generation(state="pending"))
        )
        result = await make_client(api_style="task", route_prefix=prefix).submit_generation(REQUEST)
        assert json.loads(route.calls.last.request.content) == REQUEST.to_wire("task")
        assert result.id == GID

    async def test_query_one(self, relay, make_client, prefix):
        """GET {prefix}/task?id={id}."""
        route = relay.get(f"{prefix}/task", params={"id": GID}).respond(
            200, json=wrapped(generation())
        )
        result = await make_client(api_style="task", route_prefix=prefix).get_generation(GID)
        assert route.call_count == 1
        assert result.state is GenerationState.COMPLETED

    async def test_query_many_queries_one_by_one(self, relay, make_client, prefix):
        """No batch route in this style: one GET per id, never POST /tasks."""
        batch = relay.post(f"{prefix}/tasks").respond(500)
        for gid in ("a", "b"):
            relay.get(f"{prefix}/task", params={"id": gid}).respond(
                200, json=wrapped(generation(gid))
            )
        client = make_client(api_style="task", route_prefix=prefix)
        assert not client.batch_supported
        assert [g.id for g in await client.get_generations(["b", "a"])] == ["b", "a"]
        assert batch.call_count == 0


class TestOfficialStyleRoutes:
    """Style `official`: /dream-machine/v1/generations, whatever the route prefix."""

    async def test_submit(self, relay, make_client):
        """POST /dream-machine/v1/generations with the official body."""
        route = relay.post(OFFICIAL).respond(
            201, json={"id": "o-1", "state": "queued", "assets": None}
        )
        result = await make_client(
            api_style="official", route_prefix="/pro/luma"
        ).submit_generation(REQUEST)
        assert json.loads(route.calls.last.request.content) == REQUEST.to_wire("official")
        assert (result.id, result.state) == ("o-1", GenerationState.PENDING)

    async def test_query_one(self, relay, make_client):
        """GET /dream-machine/v1/generations/{id}."""
        relay.get(f"{OFFICIAL}/o-1").respond(
            200, json={"id": "o-1", "state": "dreaming", "assets": None}
        )
        result = await make_client(api_style="official").get_generation("o-1")
        assert result.state is GenerationState.PROCESSING

    async def test_extend_is_a_submit_with_the_generation_as_frame0(self, relay, make_client):
        """No extend route: a new generation whose keyframes.frame0 is the old one."""
        route = relay.post(OFFICIAL).respond(
            201, json={"id": "o-2", "state": "queued", "assets": None}
        )
        result = await make_client(api_style="official").extend_generation(
            "o-1", GenerationRequest(prompt="more")
        )
        body = json.loads(route.calls.last.request.content)
        assert body["keyframes"]["frame0"] == {"type": "generation", "id": "o-1"}
        assert body["prompt"] == "more"
        assert result.id == "o-2"

    async def test_download_url_rereads_the_generation(self, relay, make_client):
        """No download route: the link comes from the generation's assets."""
        relay.get(f"{OFFICIAL}/o-1").respond(
            200,
            json={"id": "o-1", "state": "completed", "assets": {"video": "https://x/o.mp4"}},
        )
        assert await make_client(api_style="official").get_download_url("o-1") == (
            "https://x/o.mp4"
        )


# --- headers -----------------------------------------------------------------------------------


class TestHeaders:
    async def test_bearer_key_and_extra_headers_are_sent(self, relay, make_client):
        """Authorization is `Bearer <key>`; extra headers go with every request."""
        route = relay.get(f"/luma/generations/{GID}").respond(200, json=generation())
        await make_client(extra_headers={"X-Org": "org-1", "X-Trace": "t"}).get_generation(GID)
        headers = route.calls.last.request.headers
        assert headers["Authorization"] == f"Bearer {API_KEY}"
        assert headers["X-Org"] == "org-1"
        assert headers["X-Trace"] == "t"

    async def test_post_carries_the_key_too(self, relay, make_client):
        """The key is sent on submits as well, as JSON."""
        route = relay.post("/luma/generations").respond(200, json=generation(state="pending"))
        await make_client().submit_generation(REQUEST)
        request = route.calls.last.request
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        assert request.headers["Content-Type"] == "application/json"

    async def test_base_url_path_is_kept(self, make_client):
        """A base URL with a path keeps it before the prefix."""
        with respx.mock(base_url="https://gw.example/api") as router:
            route = router.get(f"/luma/generations/{GID}").respond(200, json=generation())
            await make_client(base_url="https://gw.example/api/").get_generation(GID)
        assert route.calls.last.request.url == f"https://gw.example/api/luma/generations/{GID}"


# --- querying many -----------------------------------------------------------------------------


class TestGetGenerations:
    async def test_answers_in_the_order_asked(self, relay, make_client):
        """The relay's order does not matter: results follow the ids asked for."""
        relay.post("/luma/tasks").respond(
            200, json=[generation("c"), generation("a"), generation("b")]
        )
        result = await make_client().get_generations(["a", "b", "c"])
        assert [g.id for g in result] == ["a", "b", "c"]

    async def test_chunks_by_batch_size(self, relay, make_client):
        """5 ids with batch_size 2: three batch calls of at most 2 ids, all ids covered."""

        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=[generation(i) for i in ids_sent(request)])

        route = relay.post("/luma/tasks").mock(side_effect=answer)
        ids = ["a", "b", "c", "d", "e"]
        result = await make_client(batch_size=2).get_generations(ids)
        assert route.call_count == 3
        chunks = [ids_sent(call.request) for call in route.calls]
        assert all(len(chunk) <= 2 for chunk in chunks)
        assert sorted(i for chunk in chunks for i in chunk) == ids
        assert [g.id for g in result] == ids

    async def test_duplicate_ids_are_asked_once_and_answered_each_time(self, relay, make_client):
        """Asking twice for one id sends it once and returns it twice."""
        route = relay.post("/luma/tasks").respond(200, json=[generation("a")])
        result = await make_client().get_generations(["a", "a"])
        assert ids_sent(route.calls.last.request) == ["a"]
        assert [g.id for g in result] == ["a", "a"]

    async def test_task_wrapper_batch_answer(self, relay, make_client):
        """The `{code, data: [{task_id, status, data}]}` batch answer is understood."""
        relay.post("/luma/tasks").respond(
            200,
            json=wrapped(
                [
                    {"task_id": "b", "status": "FAILURE", "fail_reason": "nsfw", "data": None},
                    {"task_id": "a", "status": "SUCCESS", "data": generation("a")},
                ]
            ),
        )
        a, b = await make_client().get_generations(["a", "b"])
        assert (a.id, a.state) == ("a", GenerationState.COMPLETED)
        assert (b.id, b.state, b.failure_reason) == ("b", GenerationState.FAILED, "nsfw")

    async def test_bare_array_batch_answer(self, relay, make_client, load_fixture):
        """The bare-array batch answer (fixture) is understood."""
        relay.post("/luma/tasks").respond(200, json=load_fixture("relay-batch-bare-array.json"))
        (result,) = await make_client().get_generations([GID])
        assert result.state is GenerationState.COMPLETED

    async def test_missing_ids_raise_not_found_naming_them(self, relay, make_client):
        """Ids the relay leaves out: LumaNotFoundError naming each missing id."""
        relay.post("/luma/tasks").respond(200, json=[generation("a")])
        with pytest.raises(LumaNotFoundError) as caught:
            await make_client().get_generations(["a", "ghost-1", "ghost-2"])
        assert "ghost-1" in str(caught.value)
        assert "ghost-2" in str(caught.value)
        assert "a," not in str(caught.value)
        assert caught.value.generation_id == "ghost-1"

    async def test_find_generations_leaves_missing_ids_out(self, relay, make_client):
        """find_generations returns what the relay knows, by id, without raising."""
        relay.post("/luma/tasks").respond(200, json=[generation("b"), generation("stray")])
        found = await make_client().find_generations(["a", "b"])
        assert list(found) == ["b"]
        assert found["b"].id == "b"

    async def test_empty_list_makes_no_request(self, relay, make_client):
        """Nothing asked, nothing sent."""
        route = relay.post("/luma/tasks").respond(500)
        assert await make_client().get_generations([]) == []
        assert route.call_count == 0

    @pytest.mark.parametrize("status", [404, 405])
    async def test_falls_back_to_single_queries_and_remembers(self, relay, make_client, status):
        """404/405 from the batch route: single queries, and no batch request next time."""
        batch = relay.post("/luma/tasks").respond(status, json={"detail": "Not Found"})
        singles = {
            gid: relay.get(f"/luma/generations/{gid}").respond(200, json=generation(gid))
            for gid in ("a", "b", "c")
        }
        client = make_client()
        assert client.batch_supported
        assert [g.id for g in await client.get_generations(["c", "a"])] == ["c", "a"]
        assert batch.call_count == 1
        assert not client.batch_supported
        assert [g.id for g in await client.get_generations(["b", "a"])] == ["b", "a"]
        assert batch.call_count == 1
        assert [singles[g].call_count for g in ("a", "b", "c")] == [2, 1, 1]

    async def test_fallback_single_queries_run_concurrently(self, relay, make_client):
        """The single queries of a fallback overlap instead of running one after another."""
        relay.post("/luma/tasks").respond(404)
        in_flight = 0
        all_in = asyncio.Event()
        ids = ["a", "b", "c", "d"]

        async def answer(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight
            in_flight += 1
            if in_flight == len(ids):
                all_in.set()
            await asyncio.wait_for(all_in.wait(), timeout=0.5)
            return httpx.Response(200, json=generation(request.url.path.rsplit("/", 1)[-1]))

        relay.get(path__regex=r"^/luma/generations/[a-d]$").mock(side_effect=answer)
        result = await make_client().get_generations(ids)
        assert [g.id for g in result] == ids

    async def test_fallback_leaves_unknown_ids_out(self, relay, make_client):
        """After a fallback, a 404 on a single query means 'unknown id', not a failure."""
        relay.post("/luma/tasks").respond(404)
        relay.get("/luma/generations/a").respond(200, json=generation("a"))
        relay.get("/luma/generations/ghost").respond(404, json={"detail": "not found"})
        client = make_client()
        assert list(await client.find_generations(["a", "ghost"])) == ["a"]
        with pytest.raises(LumaNotFoundError, match="ghost"):
            await client.get_generations(["a", "ghost"])

    async def test_other_batch_errors_are_raised(self, relay, make_client):
        """A batch error other than 404/405 is not mistaken for a missing route."""
        relay.post("/luma/tasks").respond(401, json={"detail": "Invalid API key is provided"})
        client = make_client()
        with pytest.raises(LumaAuthError):
            await client.get_generations(["a"])
        assert client.batch_supported


# --- errors ------------------------------------------------------------------------------------

ERROR_BODIES = {
    "gateway": {
        "error": {"message": "无效的令牌 (request id: 20241222133840123456789)", "type": "x"}
    },
    "task": {"code": "task_not_exist", "message": "task_not_exist", "data": None},
    "self-hosted": {"detail": {"reason": "unauthorized secret token", "code": 1}},
    "official": {"detail": "Invalid API key is provided"},
}


class TestErrorMapping:
    @pytest.mark.parametrize(
        ("status", "error_class"),
        [
            (401, LumaAuthError),
            (403, LumaAuthError),
            (404, LumaNotFoundError),
            (429, LumaRateLimitError),
            (500, LumaServerError),
            (502, LumaServerError),
            (503, LumaServerError),
            (524, LumaServerError),
            (400, LumaRequestError),
            (422, LumaRequestError),
        ],
    )
    @pytest.mark.parametrize("shape", ["gateway", "self-hosted", "official"])
    async def test_status_decides_the_class_and_the_relay_message_is_kept(
        self, relay, make_client, status, error_class, shape
    ):
        """Each status gives its class, with the relay's words in relay_message and str()."""
        body = ERROR_BODIES[shape]
        relay.get(f"/luma/generations/{GID}").respond(status, json=body)
        with pytest.raises(error_class) as caught:
            await make_client(retry=NO_RETRY).get_generation(GID)
        error = caught.value
        assert error.status_code == status
        assert error.relay_message
        assert error.relay_message in str(error)
        assert error.generation_id == GID
        assert isinstance(error, LumaHTTPError)

    @pytest.mark.parametrize("shape", sorted(ERROR_BODIES))
    async def test_each_fixture_error_body_at_its_usual_status(
        self, relay, make_client, load_fixture, shape
    ):
        """The shapes of error-bodies.json, as relays send them, give the right class."""
        bodies = load_fixture("error-bodies.json")
        cases = {
            "gateway": ("new-api gateway (401/403/429/503)", 401, LumaAuthError),
            "task": ("new-api task route (task_not_exist is HTTP 400)", 400, LumaNotFoundError),
            "self-hosted": ("self-hosted relay", 403, LumaAuthError),
            "official": ("official API / upstream passthrough", 401, LumaAuthError),
        }
        key, status, error_class = cases[shape]
        relay.get(f"/luma/generations/{GID}").respond(status, json=bodies[key])
        with pytest.raises(error_class) as caught:
            await make_client(retry=NO_RETRY).get_generation(GID)
        assert caught.value.relay_message is not None
        assert caught.value.relay_message in str(caught.value)

    async def test_task_not_exist_on_http_400_is_not_found(self, relay, make_client):
        """The task route's unknown id comes as HTTP 400 `task_not_exist`: LumaNotFoundError."""
        relay.get("/luma/task", params={"id": GID}).respond(400, json=ERROR_BODIES["task"])
        with pytest.raises(LumaNotFoundError) as caught:
            await make_client(api_style="task").get_generation(GID)
        assert caught.value.relay_code == "task_not_exist"

    async def test_auth_status_wins_over_not_exist_words(self, relay, make_client):
        """A 401 whose message says the token 'does not exist' is a key problem."""
        relay.get(f"/luma/generations/{GID}").respond(
            401, json={"error": {"message": "token does not exist", "type": "x"}}
        )
        with pytest.raises(LumaAuthError):
            await make_client().get_generation(GID)

    @pytest.mark.parametrize(
        ("body", "error_class"),
        [
            (
                {"code": "task_not_exist", "message": "task_not_exist", "data": None},
                LumaNotFoundError,
            ),
            (
                {"code": "fail", "message": "invalid prompt parameter", "data": None},
                LumaRequestError,
            ),
            ({"code": "error", "message": "insufficient quota for token"}, LumaAuthError),
            ({"code": 500, "message": "upstream went away", "data": None}, LumaServerError),
        ],
    )
    async def test_200_with_an_error_code_is_an_error(self, relay, make_client, body, error_class):
        """HTTP 200 with `code` not success raises (never a Generation), with the message."""
        relay.get("/luma/task", params={"id": GID}).respond(200, json=body)
        with pytest.raises(error_class) as caught:
            await make_client(api_style="task", retry=NO_RETRY).get_generation(GID)
        assert caught.value.status_code == 200
        assert caught.value.relay_message == body["message"]
        assert body["message"] in str(caught.value)

    @pytest.mark.parametrize(
        "content", [b"<html><body>502 Bad Gateway</body></html>", b"", b"{not json"]
    )
    async def test_non_json_200_is_a_protocol_error(self, relay, make_client, content):
        """A 200 whose body is not JSON is a LumaProtocolError saying so."""
        relay.get(f"/luma/generations/{GID}").respond(
            200, content=content, headers={"Content-Type": "text/html"}
        )
        with pytest.raises(LumaProtocolError, match="not JSON"):
            await make_client().get_generation(GID)

    async def test_200_json_that_is_no_generation_is_a_protocol_error(self, relay, make_client):
        """JSON without a generation is a LumaProtocolError naming the asked id."""
        relay.get(f"/luma/generations/{GID}").respond(200, json={"hello": "world"})
        with pytest.raises(LumaProtocolError) as caught:
            await make_client().get_generation(GID)
        assert caught.value.generation_id == GID

    async def test_request_id_from_message_text(self, relay, make_client):
        """`(request id: ...)` in the relay's message becomes request_id."""
        relay.get(f"/luma/generations/{GID}").respond(401, json=ERROR_BODIES["gateway"])
        with pytest.raises(LumaAuthError) as caught:
            await make_client().get_generation(GID)
        assert caught.value.request_id == "20241222133840123456789"

    async def test_request_id_from_header(self, relay, make_client):
        """An X-Request-Id header becomes request_id, and is shown in the message."""
        relay.get(f"/luma/generations/{GID}").respond(
            403, json=ERROR_BODIES["official"], headers={"X-Request-Id": "req-abc-1"}
        )
        with pytest.raises(LumaAuthError) as caught:
            await make_client().get_generation(GID)
        assert caught.value.request_id == "req-abc-1"
        assert "req-abc-1" in str(caught.value)

    async def test_retry_after_seconds(self, relay, make_client):
        """A 429's Retry-After in seconds becomes retry_after."""
        relay.get(f"/luma/generations/{GID}").respond(
            429,
            json={"error": {"message": "当前分组上游负载已饱和，请稍后再试"}},
            headers={"Retry-After": "7"},
        )
        with pytest.raises(LumaRateLimitError) as caught:
            await make_client(retry=NO_RETRY).get_generation(GID)
        assert caught.value.retry_after == 7.0
        assert "当前分组上游负载已饱和" in str(caught.value)

    async def test_retry_after_http_date(self, relay, make_client):
        """A 429's Retry-After as an HTTP date becomes the seconds until then."""
        when = datetime.now(timezone.utc) + timedelta(seconds=60)
        relay.get(f"/luma/generations/{GID}").respond(
            429, json={"detail": "slow down"}, headers={"Retry-After": format_datetime(when, True)}
        )
        with pytest.raises(LumaRateLimitError) as caught:
            await make_client(retry=NO_RETRY).get_generation(GID)
        assert caught.value.retry_after is not None
        assert 55 <= caught.value.retry_after <= 60

    async def test_429_without_retry_after(self, relay, make_client):
        """No Retry-After: retry_after is None."""
        relay.get(f"/luma/generations/{GID}").respond(429)
        with pytest.raises(LumaRateLimitError) as caught:
            await make_client(retry=NO_RETRY).get_generation(GID)
        assert caught.value.retry_after is None


# --- retries -----------------------------------------------------------------------------------

TRANSIENT = {
    "500": lambda: httpx.Response(500, json={"detail": "boom"}),
    "502": lambda: httpx.Response(502, text="Bad Gateway"),
    "503": lambda: httpx.Response(503, json={"error": {"message": "busy"}}),
    "524": lambda: httpx.Response(524, text="A timeout occurred"),
    "429": lambda: httpx.Response(429, json={"detail": "slow down"}),
    "ConnectError": lambda: httpx.ConnectError,
    "ReadTimeout": lambda: httpx.ReadTimeout,
    "RemoteProtocolError": lambda: httpx.RemoteProtocolError,
}


class TestReadRetries:
    @pytest.mark.parametrize("failure", sorted(TRANSIENT))
    async def test_reads_survive_five_transient_failures(self, relay, make_client, sleeps, failure):
        """Five transient failures in a row, then success: the read succeeds."""
        route = relay.get(f"/luma/generations/{GID}").mock(
            side_effect=[TRANSIENT[failure]() for _ in range(5)]
            + [httpx.Response(200, json=generation())]
        )
        result = await make_client().get_generation(GID)
        assert result.id == GID
        assert route.call_count == 6
        assert len(sleeps) == 5

    @pytest.mark.parametrize(
        ("failure", "error_class"),
        [
            ("503", LumaServerError),
            ("429", LumaRateLimitError),
            ("ConnectError", LumaTransportError),
            ("ReadTimeout", LumaTransportError),
            ("RemoteProtocolError", LumaTransportError),
        ],
    )
    async def test_reads_fail_after_max_retries(self, relay, make_client, failure, error_class):
        """One failure more than max_retries: the error is raised after max_retries + 1 tries."""
        route = relay.get(f"/luma/generations/{GID}").mock(
            side_effect=[TRANSIENT[failure]() for _ in range(6)]
        )
        with pytest.raises(error_class):
            await make_client().get_generation(GID)
        assert route.call_count == 6

    async def test_the_last_error_is_raised(self, relay, make_client, sleeps):
        """After mixed failures, the error raised is the last one seen."""
        relay.get(f"/luma/generations/{GID}").mock(
            side_effect=[
                httpx.ConnectError,
                httpx.Response(429),
                httpx.Response(503, json={"detail": "the last straw"}),
            ]
        )
        with pytest.raises(LumaServerError) as caught:
            await make_client(retry=RetryPolicy(max_retries=2)).get_generation(GID)
        assert caught.value.relay_message == "the last straw"
        assert len(sleeps) == 2

    async def test_batch_reads_are_retried(self, relay, make_client):
        """The batch query is a read: retried on 5xx."""
        route = relay.post("/luma/tasks").mock(
            side_effect=[httpx.Response(502), httpx.Response(200, json=[generation("a")])]
        )
        assert [g.id for g in await make_client().get_generations(["a"])] == ["a"]
        assert route.call_count == 2

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
    async def test_refusals_are_not_retried(self, relay, make_client, sleeps, status):
        """Client errors will not pass by themselves: no retry, no sleep."""
        route = relay.get(f"/luma/generations/{GID}").respond(status, json={"detail": "no"})
        with pytest.raises(LumaHTTPError):
            await make_client().get_generation(GID)
        assert route.call_count == 1
        assert sleeps == []

    async def test_delays_grow_exponentially_with_jitter_and_a_cap(
        self, relay, make_client, sleeps
    ):
        """Delays start near 0.5 s, double each retry within +-25 %, and never pass the cap."""
        relay.get(f"/luma/generations/{GID}").respond(503)
        policy = RetryPolicy(max_retries=8)
        with pytest.raises(LumaServerError):
            await make_client(retry=policy).get_generation(GID)
        bases = [min(0.5 * 2**n, 10.0) for n in range(8)]  # 0.5 1 2 4 8 10 10 10
        assert len(sleeps) == 8
        for delay, base in zip(sleeps, bases, strict=True):
            assert base * 0.75 <= delay <= base * 1.25
            assert delay <= policy.max_backoff_seconds
        assert sleeps[0] < sleeps[2] < sleeps[4]
        assert any(abs(delay - base) > 1e-9 for delay, base in zip(sleeps, bases, strict=True))

    def test_backoff_arithmetic_without_jitter(self):
        """jitter=0: exactly 0.5, 1, 2, 4 ... up to max_backoff_seconds."""
        policy = RetryPolicy(jitter=0, max_backoff_seconds=3.0)
        assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]

    def test_jittered_delay_never_exceeds_the_cap(self):
        """Even with the largest jitter, the cap holds."""
        policy = RetryPolicy(jitter=0.9, max_backoff_seconds=2.0)
        assert all(policy.delay(10) <= 2.0 for _ in range(200))

    @pytest.mark.parametrize(
        ("header", "expected"),
        [("7", 7.0), ("0", 0.0), ("3600", 30.0)],
    )
    async def test_retry_after_is_honoured_and_capped(
        self, relay, make_client, sleeps, header, expected
    ):
        """A 429's Retry-After replaces the backoff, capped at max_retry_after_seconds."""
        relay.get(f"/luma/generations/{GID}").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": header}),
                httpx.Response(200, json=generation()),
            ]
        )
        await make_client(retry=RetryPolicy(max_retry_after_seconds=30.0)).get_generation(GID)
        assert sleeps == [expected]

    async def test_retry_after_http_date_is_honoured(self, relay, make_client, sleeps):
        """An HTTP-date Retry-After waits until about then."""
        when = datetime.now(timezone.utc) + timedelta(seconds=20)
        relay.get(f"/luma/generations/{GID}").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": format_datetime(when, True)}),
                httpx.Response(200, json=generation()),
            ]
        )
        await make_client().get_generation(GID)
        assert len(sleeps) == 1
        assert 15 <= sleeps[0] <= 20


SUBMITS = {
    "submit": ("/luma/generations", lambda client: client.submit_generation(REQUEST)),
    "extend": (
        f"/luma/generations/{GID}/extend",
        lambda client: client.extend_generation(GID, REQUEST),
    ),
}


@pytest.mark.parametrize("operation", sorted(SUBMITS))
class TestPaidRequestRetries:
    """Submits and extends are paid: retried only when the relay surely did not take them."""

    @pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.RemoteProtocolError])
    async def test_not_retried_when_the_request_may_have_arrived(
        self, relay, make_client, sleeps, operation, failure
    ):
        """A broken answer: exactly one POST, and an error saying not to resubmit blindly."""
        path, call = SUBMITS[operation]
        route = relay.post(path).mock(side_effect=failure)
        with pytest.raises(LumaSubmitUncertainError) as caught:
            await call(make_client())
        assert route.call_count == 1
        assert sleeps == []
        assert "before submitting again" in str(caught.value)
        assert "not retried" in str(caught.value)

    @pytest.mark.parametrize("status", [500, 502, 503, 524])
    async def test_not_retried_on_server_errors(
        self, relay, make_client, sleeps, operation, status
    ):
        """A 5xx after a POST may hide a created generation: one POST only, and an
        uncertain-submit error that warns against a blind resubmit."""
        path, call = SUBMITS[operation]
        route = relay.post(path).respond(status, json={"detail": "upstream timeout"})
        with pytest.raises(LumaSubmitUncertainError) as caught:
            await call(make_client())
        assert route.call_count == 1
        assert sleeps == []
        assert f"HTTP {status}" in str(caught.value)
        assert "upstream timeout" in str(caught.value)
        assert "before submitting again" in str(caught.value)

    @pytest.mark.parametrize(
        "failure",
        [
            pytest.param(httpx.ConnectError, id="ConnectError"),
            pytest.param(httpx.Response(429, json={"detail": "slow down"}), id="429"),
        ],
    )
    async def test_retried_when_the_relay_surely_did_not_take_it(
        self, relay, make_client, sleeps, operation, failure
    ):
        """A failed connection or a 429 is retried: nothing was paid for."""
        path, call = SUBMITS[operation]
        route = relay.post(path).mock(
            side_effect=[failure, httpx.Response(200, json=generation("new", "pending"))]
        )
        result = await call(make_client())
        assert result.id == "new"
        assert route.call_count == 2
        assert len(sleeps) == 1

    async def test_unreadable_2xx_says_a_generation_probably_exists(
        self, relay, make_client, operation
    ):
        """A 2xx answer we cannot read (not a generation, or not JSON at all): the paid
        generation may exist, so an uncertain-submit error, never 'try again later'."""
        path, call = SUBMITS[operation]
        route = relay.post(path).respond(200, json={"ok": True})
        with pytest.raises(LumaSubmitUncertainError, match="before submitting again"):
            await call(make_client())
        relay.post(path).respond(200, text='{"id": "abc", "sta')
        with pytest.raises(LumaSubmitUncertainError) as caught:
            await call(make_client())
        assert "try again later" not in str(caught.value)
        assert route.call_count == 2  # one POST per call, never a retry


# --- invalid input -----------------------------------------------------------------------------

BAD_IDS = ["../x", "a/b", "", "  ", "..", "x/../../etc", "a?b=c", "a b"]
OPERATIONS = {
    "get_generation": lambda client, gid: client.get_generation(gid),
    "get_generations": lambda client, gid: client.get_generations(["ok-1", gid]),
    "find_generations": lambda client, gid: client.find_generations([gid]),
    "extend_generation": lambda client, gid: client.extend_generation(gid, REQUEST),
    "get_download_url": lambda client, gid: client.get_download_url(gid),
}


class TestInvalidInput:
    @pytest.mark.parametrize("operation", sorted(OPERATIONS))
    @pytest.mark.parametrize("bad_id", BAD_IDS)
    async def test_invalid_ids_are_refused_before_any_request(
        self, relay, make_client, operation, bad_id
    ):
        """Ids that could move in a URL path raise LumaConfigurationError; nothing is sent."""
        anything = relay.route().respond(200, json=generation())
        with pytest.raises(LumaConfigurationError, match="not a valid generation id"):
            await OPERATIONS[operation](make_client(), bad_id)
        assert anything.call_count == 0

    @pytest.mark.parametrize("operation", sorted(OPERATIONS))
    @pytest.mark.parametrize("style", ["task", "official"])
    async def test_invalid_ids_are_refused_in_every_style(
        self, relay, make_client, operation, style
    ):
        """The other styles check ids as strictly (the task style puts them in a query)."""
        anything = relay.route().respond(200, json=wrapped(generation()))
        with pytest.raises(LumaConfigurationError, match="not a valid generation id"):
            await OPERATIONS[operation](make_client(api_style=style), "../x")
        assert anything.call_count == 0

    @pytest.mark.parametrize(
        "base_url", ["ftp://relay.example", "relay.example", "", "javascript:alert(1)", "file:///x"]
    )
    def test_non_http_base_urls_are_refused(self, base_url):
        """The client only talks http(s)."""
        with pytest.raises(LumaConfigurationError, match="base_url"):
            LumaClient(base_url, API_KEY)

    def test_unknown_style_is_refused(self):
        """An api_style that is none of the three is a configuration error."""
        with pytest.raises(LumaConfigurationError, match="api_style"):
            LumaClient(BASE_URL, API_KEY, api_style="graphql")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "setting", [{"batch_size": 0}, {"timeout_seconds": 0}, {"max_connections": 0}]
    )
    def test_impossible_settings_are_refused(self, setting):
        """Zero batch size, timeout or connections cannot work."""
        with pytest.raises(LumaConfigurationError):
            LumaClient(BASE_URL, API_KEY, **setting)

    def test_configuration_errors_are_luma_errors(self):
        """Configuration errors are LumaErrors (and ValueErrors)."""
        assert issubclass(LumaConfigurationError, LumaError)
        assert issubclass(LumaConfigurationError, ValueError)
