"""Every FaultKind switched on, then observed over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from luma_prefect.simulator import Fault, FaultKind, RelaySimulator

ROOTS = {
    "generations": "/luma/generations",
    "task": "/luma/generations",
    "official": "/dream-machine/v1/generations",
}


def submit(api: httpx.Client, prompt: str = "cat dance") -> str:
    answer = api.post("/luma/generations", json={"user_prompt": prompt})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def query_path(style: str, gid: str) -> str:
    return f"/luma/task?id={gid}" if style == "task" else f"{ROOTS[style]}/{gid}"


def test_rate_limit_with_retry_after_then_retires(sim: RelaySimulator, api: httpx.Client) -> None:
    fault = sim.add_fault(Fault(FaultKind.RATE_LIMIT, retry_after="3", times=2))
    for _ in range(2):
        refused = api.post("/luma/generations", json={"user_prompt": "x"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "3"
        error = refused.json()["error"]
        assert error["type"] == "new_api_error"
        assert error["message"].startswith("当前分组上游负载已饱和，请稍后再试 (request id: ")
    assert sim.counters().submits_accepted == 0
    assert sim.faults() == []
    assert submit(api)
    assert sim.counters().submits_accepted == 1
    assert sim.counters().faults_fired == {"rate_limit": 2}
    assert not sim.remove_fault(fault)


def test_rate_limit_http_date_and_none(sim: RelaySimulator, api: httpx.Client) -> None:
    date = "Wed, 21 Oct 2099 07:28:00 GMT"
    sim.add_fault(Fault(FaultKind.RATE_LIMIT, retry_after=date, times=1, routes=("query",)))
    sim.add_fault(Fault(FaultKind.RATE_LIMIT, times=1, routes=("query",)))
    gid = submit(api)
    first = api.get(f"/luma/generations/{gid}")
    assert first.status_code == 429 and first.headers["retry-after"] == date
    second = api.get(f"/luma/generations/{gid}")
    assert second.status_code == 429 and "retry-after" not in second.headers
    assert api.get(f"/luma/generations/{gid}").status_code == 200


@pytest.mark.parametrize("status", [500, 502, 503, 524])
def test_server_error_burst(status: int, sim: RelaySimulator, api: httpx.Client) -> None:
    gid = sim.create_generation(prompt="p", state="completed")
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=status, times=3, routes=("query",)))
    assert api.post("/luma/tasks", json={"ids": [gid]}).status_code == 200
    for _ in range(3):
        answer = api.get(f"/luma/generations/{gid}")
        assert answer.status_code == status
        if status in (502, 524):
            assert answer.headers["content-type"].startswith("text/html")
            assert f"Error code {status}" in answer.text
        else:
            assert answer.json()["error"]["type"] == "upstream_error"
    assert api.get(f"/luma/generations/{gid}").status_code == 200
    assert sim.counters().requests["query"] == 4


def test_server_error_targets_one_generation(sim: RelaySimulator, api: httpx.Client) -> None:
    first = sim.create_generation(prompt="first", state="completed")
    second = sim.create_generation(prompt="second", state="completed")
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, generation_id=first))
    assert api.get(f"/luma/generations/{first}").status_code == 503
    assert api.get(f"/luma/generations/{second}").status_code == 200
    assert api.post("/luma/tasks", json={"ids": [second]}).status_code == 200
    assert api.post("/luma/tasks", json={"ids": [second, first]}).status_code == 503
    sim.clear_faults()
    assert api.get(f"/luma/generations/{first}").status_code == 200


def test_prompt_contains_targets_future_generations(sim: RelaySimulator, api: httpx.Client) -> None:
    sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=500, prompt_contains="[flaky]"))
    assert api.post("/luma/generations", json={"user_prompt": "a [flaky] fox"}).status_code == 500
    calm = submit(api, "a calm fox")
    assert api.get(f"/luma/generations/{calm}").status_code == 200
    flaky = sim.create_generation(prompt="seeded [flaky] one", state="completed")
    assert api.get(f"/luma/generations/{flaky}").status_code == 500


def test_slow(sim: RelaySimulator, api: httpx.Client) -> None:
    gid = sim.create_generation(prompt="p", state="completed")
    sim.add_fault(Fault(FaultKind.SLOW, delay_seconds=0.3, times=1))
    started = time.monotonic()
    assert api.get(f"/luma/generations/{gid}").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert api.get(f"/luma/generations/{gid}").status_code == 200
    assert time.monotonic() - started < 0.3


def test_drop_connection_on_submit_still_pays(sim: RelaySimulator, api: httpx.Client) -> None:
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("submit",), times=1))
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/luma/generations", json={"user_prompt": "paid but lost"})
    counters = sim.counters()
    assert counters.submits_accepted == 1
    assert counters.submits_by_prompt == {"paid but lost": 1}
    assert len(sim.generation_ids()) == 1
    assert counters.faults_fired == {"drop_connection": 1}


def test_malformed_json(sim: RelaySimulator, api: httpx.Client) -> None:
    sim.add_fault(Fault(FaultKind.MALFORMED_JSON, times=1))
    answer = api.post("/luma/generations", json={"user_prompt": "x"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.content)
    assert sim.counters().submits_accepted == 1
    gid = sim.generation_ids()[0]
    assert api.get(f"/luma/generations/{gid}").json()["id"] == gid


def test_error_body_200(sim: RelaySimulator, api: httpx.Client) -> None:
    sim.add_fault(Fault(FaultKind.ERROR_BODY_200, routes=("submit",), times=1))
    answer = api.post("/luma/generations", json={"user_prompt": "x"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["code"] == "upstream_error" and body["data"] is None and body["message"]
    assert sim.counters().submits_accepted == 0


@pytest.mark.parametrize("style", ["generations", "task", "official"])
def test_not_found_after_submit(
    style: str,
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[..., httpx.Client],
) -> None:
    sim = sim_factory(style=style, batch_shape="task_wrapper")
    api = client_for(sim)
    sim.add_fault(Fault(FaultKind.NOT_FOUND_AFTER_SUBMIT, seconds=5))
    body = {"user_prompt": "x", "prompt": "x"}
    created = api.post(ROOTS[style], json=body).json()
    gid = created["data"]["id"] if style == "task" else created["id"]
    early = api.get(query_path(style, gid))
    if style == "task":
        assert early.status_code == 400 and early.json()["code"] == "task_not_exist"
    elif style == "official":
        assert early.status_code == 404 and early.json() == {"detail": "Generation not found"}
    else:
        assert early.status_code == 404 and early.json()["error"]["type"] == "new_api_error"
        assert api.post("/luma/tasks", json={"ids": [gid]}).json()["data"] == []
    sim.advance(5)
    assert api.get(query_path(style, gid)).status_code == 200
    if style == "generations":
        assert len(api.post("/luma/tasks", json={"ids": [gid]}).json()["data"]) == 1


def test_no_download_url(sim: RelaySimulator, api: httpx.Client) -> None:
    sim.add_fault(Fault(FaultKind.NO_DOWNLOAD_URL))
    gid = submit(api)
    assert api.get(f"/luma/generations/{gid}/download_video_url").status_code == 400
    sim.advance(10)
    done = api.get(f"/luma/generations/{gid}").json()
    assert done["state"] == "completed"
    assert "download_url" not in done["video"] and done["video"]["url"]
    assert done["video_raw"] is None
    link = api.get(f"/luma/generations/{gid}/download_video_url")
    assert link.status_code == 200
    assert httpx.get(link.json()["url"]).status_code == 200
    batch = api.post("/luma/tasks", json={"ids": [gid]}).json()
    assert "download_url" not in batch[0]["video"]


def test_expired_link_until_queried_again(sim: RelaySimulator, api: httpx.Client) -> None:
    gid = sim.create_generation(prompt="p", state="completed")
    other = sim.create_generation(prompt="other", state="completed")
    old_link = api.get(f"/luma/generations/{gid}").json()["video"]["download_url"]
    other_link = api.get(f"/luma/generations/{other}").json()["video"]["url"]
    assert httpx.get(old_link).status_code == 200
    sim.add_fault(Fault(FaultKind.EXPIRED_LINK, generation_id=gid))
    expired = httpx.get(old_link)
    assert expired.status_code == 403 and b"AccessDenied" in expired.content
    assert httpx.get(other_link).status_code == 200
    fresh = api.get(f"/luma/generations/{gid}").json()["video"]["download_url"]
    assert fresh != old_link and "sig=2" in fresh
    assert httpx.get(fresh).status_code == 200
    assert httpx.get(old_link).status_code == 403
    # A query with no fault in force leaves the fresh link alone.
    assert api.get(f"/luma/generations/{gid}").json()["video"]["download_url"] == fresh


def test_expired_link_whole_server_and_download_url(sim: RelaySimulator, api: httpx.Client) -> None:
    gid = sim.create_generation(prompt="p", state="completed")
    link = api.get(f"/luma/generations/{gid}/download_video_url").json()["url"]
    sim.add_fault(FaultKind.EXPIRED_LINK)
    assert httpx.get(link).status_code == 403
    fresh = api.get(f"/luma/generations/{gid}/download_video_url").json()["url"]
    assert httpx.get(fresh).status_code == 200


def test_no_batch_route(sim: RelaySimulator, api: httpx.Client) -> None:
    gid = sim.create_generation(prompt="p", state="completed")
    fault = sim.add_fault(Fault(FaultKind.NO_BATCH_ROUTE))
    missing = api.post("/luma/tasks", json={"ids": [gid]})
    assert missing.status_code == 404
    assert "Invalid URL" in missing.json()["error"]["message"]
    assert sim.counters().queries_by_generation == {}
    sim.remove_fault(fault)
    assert api.post("/luma/tasks", json={"ids": [gid]}).status_code == 200


@pytest.mark.parametrize("style", ["generations", "official"])
def test_unknown_state(
    style: str,
    sim_factory: Callable[..., RelaySimulator],
    client_for: Callable[..., httpx.Client],
) -> None:
    sim = sim_factory(style=style, batch_shape="task_wrapper")
    api = client_for(sim)
    gid = sim.create_generation(prompt="p", state="processing")
    sim.add_fault(Fault(FaultKind.UNKNOWN_STATE, prompt_contains="p"))
    assert api.get(query_path(style, gid)).json()["state"] == "waiting_for_gpu"
    if style == "generations":
        item = api.post("/luma/tasks", json={"ids": [gid]}).json()["data"][0]
        assert item["status"] == "UNKNOWN" and item["data"]["state"] == "waiting_for_gpu"
    sim.advance(10)
    assert api.get(query_path(style, gid)).json()["state"] == "completed"


def test_fail_generation(sim: RelaySimulator, api: httpx.Client) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="forbidden"))
    bad = submit(api, "something forbidden")
    good = submit(api, "something nice")
    later = submit(api, "targeted later")
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, generation_id=later))
    sim.advance(10)
    failed = api.get(f"/luma/generations/{bad}").json()
    assert failed["state"] == "failed" and failed["failure_reason"] == "Frame moderation failed"
    assert failed["video"] is None
    assert api.get(f"/luma/generations/{good}").json()["state"] == "completed"
    assert api.get(f"/luma/generations/{later}").json()["state"] == "failed"
    assert httpx.get(f"{sim.base_url}/cdn/{bad}/video.mp4?sig=1").status_code == 404


def test_fail_generation_times(sim: RelaySimulator, api: httpx.Client) -> None:
    sim.add_fault(Fault(FaultKind.FAIL_GENERATION, times=1))
    ids = [submit(api, f"p{i}") for i in range(3)]
    sim.advance(10)
    states = [api.get(f"/luma/generations/{i}").json()["state"] for i in ids]
    assert states == ["failed", "completed", "completed"]


def test_faults_over_admin_http(sim: RelaySimulator, api: httpx.Client) -> None:
    gid = sim.create_generation(prompt="p", state="completed")
    admin = httpx.Client(base_url=f"{sim.base_url}/_simulator")
    with admin:
        spec = {"kind": "server_error", "status": 502, "routes": ["query"], "times": 5}
        added = admin.post("/faults", json=spec)
        assert added.status_code == 201
        fault_id = added.json()["id"]
        assert api.get(f"/luma/generations/{gid}").status_code == 502
        listed = admin.get("/faults").json()
        assert listed[0]["id"] == fault_id and listed[0]["remaining"] == 4
        assert admin.delete(f"/faults/{fault_id}").status_code == 200
        assert admin.delete(f"/faults/{fault_id}").status_code == 404
        assert api.get(f"/luma/generations/{gid}").status_code == 200
        admin.post("/faults", json={"kind": "RATE_LIMIT"})
        assert api.get(f"/luma/generations/{gid}").status_code == 429
        assert admin.delete("/faults").status_code == 200
        assert api.get(f"/luma/generations/{gid}").status_code == 200
        assert admin.post("/faults", json={"kind": "nope"}).status_code == 400
        assert admin.post("/faults", json={"kind": "slow", "dalay": 1}).status_code == 400
        assert admin.post("/faults", json={"kind": "slow", "routes": ["x"]}).status_code == 400
        assert admin.post("/faults", content=b"[").status_code == 400


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault(FaultKind.SLOW, routes=("queries",))
    with pytest.raises(ValueError):
        Fault(FaultKind.SLOW, times=0)
    with pytest.raises(ValueError):
        Fault("bogus")  # type: ignore[arg-type]
    fault = Fault("server_error", routes="query")  # type: ignore[arg-type]
    assert fault.kind is FaultKind.SERVER_ERROR and fault.routes == ("query",)
    assert Fault.from_dict(fault.to_dict()) == fault
    assert Fault.from_dict({"kind": "slow", "routes": "media"}).routes == ("media",)
    with pytest.raises(ValueError):
        Fault.from_dict({"routes": ["query"]})
    assert Fault(FaultKind.EXPIRED_LINK).applies_to("media")
    assert not Fault(FaultKind.RATE_LIMIT).applies_to("media")
