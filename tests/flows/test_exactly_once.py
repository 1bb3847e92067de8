"""Exactly once: one logical request in one logical run is paid at most once, an unknown
submit outcome is never re-sent and never silent, an answer about another generation is
never delivered. Real flow runs against the simulator over loopback HTTP (issue #11)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.runtime import flow_run
from prefect.states import State
from typer.testing import CliRunner

from luma_prefect import GenerationRequest, LumaError, LumaSubmitUncertainError
from luma_prefect.cli import app
from luma_prefect.flows import collect_pending, generate_video, generate_videos
from luma_prefect.ledger._records import Ledger
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator
from luma_prefect.storage import storage_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}


def _ledger(path: Path) -> Ledger:
    return Ledger(storage_for(str(path)))


async def _artifact(key: str, state: State[Any]) -> Any:
    """The latest version of artifact `key` made by the flow run of `state` (other
    runs on the same API make versions of the same key)."""
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    return max(found, key=lambda a: a.created) if found else None


# -- 1. retries at a higher level never pay again ------------------------------------------


async def test_a_retried_parent_flow_does_not_pay_again_for_its_subflow(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    """The first attempt's wait times out, so the parent fails and retries: Prefect makes a
    new generate-video subflow run, whose submit must reuse the generation already paid."""

    @flow(retries=1, retry_delay_seconds=0)
    async def parent() -> str:
        first = flow_run.run_count == 1
        published = await generate_video(
            prompt="a parent that retries",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            timeout_seconds=30.0 if first else 600.0,
            **FAST,
        )
        return published.generation_id

    generation_id = await parent()

    assert sim.counters().submits_accepted == 1
    assert sim.generation_ids() == [generation_id]
    manifest = json.loads((tmp_path / generation_id / "manifest.json").read_text())
    assert manifest["prompt"] == "a parent that retries"


async def test_a_retried_parent_of_a_batch_does_not_pay_again_for_any_item(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    """generate-videos inside a retried parent: every item keeps its paid generation."""
    # One video link is refused once (a final download error): the batch fails, the parent
    # retries, and a new generate-videos subflow run submits the three requests again.
    sim.add_fault(
        Fault(FaultKind.SERVER_ERROR, status=400, routes=("media",), prompt_contains="clip 1")
    )
    requests = [GenerationRequest(prompt=f"clip {i}") for i in range(3)]

    @flow(retries=1, retry_delay_seconds=0)
    async def parent() -> list[str]:
        if flow_run.run_count > 1:
            sim.clear_faults()
        outcomes = await generate_videos(
            requests,
            max_concurrent=3,
            credentials=sim.credentials(),
            destination=str(tmp_path),
            fail_when="any",
            **FAST,
        )
        return [o.generation_id for o in outcomes]

    ids = await parent()

    assert sim.counters().submits_accepted == 3
    assert sorted(ids) == sorted(sim.generation_ids())


async def test_an_idempotency_key_is_the_same_paid_submit_in_another_run(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    runs = [
        await generate_video(
            prompt="ordered once",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            idempotency_key="order-42",
            **FAST,
        )
        for _ in range(2)
    ]

    assert runs[0].generation_id == runs[1].generation_id
    assert sim.counters().submits_accepted == 1


async def test_equal_submits_in_one_run_say_once_that_they_reuse_one_generation(
    sim: RelaySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    @flow
    async def twice() -> list[str]:
        return [
            (
                await generate_video(
                    prompt="the same twice",
                    credentials=sim.credentials(),
                    destination=str(tmp_path),
                    **FAST,
                )
            ).generation_id
            for _ in range(3)
        ]

    ids = await twice()

    assert len(set(ids)) == 1 and sim.counters().submits_accepted == 1
    told = [r for r in caplog.records if "idempotency_key" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in told]
    assert "paid once per run" in told[0].getMessage()


# -- 2. an error answer to a paid POST is not "nothing was created" ------------------------


@pytest.mark.parametrize("status", [408, 400])
async def test_an_error_answer_after_acceptance_is_in_doubt_and_never_paid_again(
    sim: RelaySimulator, tmp_path: Path, status: int
) -> None:
    """The relay creates the generation, then a gateway answers 408 or 400 without its id:
    the flow's own retry must not POST again; the submit is kept in doubt."""
    sim.add_fault(Fault(FaultKind.ACCEPT_THEN_ERROR, status=status, times=1))

    with pytest.raises(LumaSubmitUncertainError, match="luma-prefect resolve"):
        await generate_video.with_options(retries=1, retry_delay_seconds=0)(
            prompt=f"accepted then {status}",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            **FAST,
        )

    assert sim.counters().submits_accepted == 1
    (intent,) = _ledger(tmp_path).in_doubt()
    assert intent.prompt == f"accepted then {status}"
    assert f"HTTP {status}" in (intent.reason or "")


async def test_a_relay_validation_refusal_is_not_in_doubt(
    make_sim: Callable[..., RelaySimulator],
) -> None:
    """A 400 in the relay's own words about the request proves nothing was created."""
    sim = make_sim(style="official")
    request = GenerationRequest.model_construct(prompt="odd frame", aspect_ratio="5:4")

    async with sim.credentials().get_client() as client:
        with pytest.raises(LumaError) as caught:
            await client.submit_generation(request)

    assert not isinstance(caught.value, LumaSubmitUncertainError)
    assert "aspect_ratio" in str(caught.value)
    assert sim.counters().submits_accepted == 0


# -- 3. nothing paid is silent --------------------------------------------------------------


async def test_a_retried_run_uses_the_persisted_submit_result(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run dies after Prefect persisted the submit's result but before the ledger
    recorded it (here: the ledger write raises); its retry must take the generation from
    the persisted result instead of refusing or paying again."""
    original = Ledger.record_submitted
    calls = {"n": 0}

    def dies_once(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the worker died here")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "record_submitted", dies_once)

    published = await generate_video.with_options(retries=1, retry_delay_seconds=0)(
        prompt="persisted once", credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    assert sim.counters().submits_accepted == 1
    assert sim.generation_ids() == [published.generation_id]
    assert _ledger(tmp_path).in_doubt() == []


async def test_the_sweep_resolves_an_in_doubt_submit_from_its_persisted_result(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the worker died here")

    with monkeypatch.context() as patch:
        patch.setattr(Ledger, "record_submitted", dies)
        with pytest.raises(RuntimeError):
            await generate_video(
                prompt="swept", credentials=sim.credentials(), destination=str(tmp_path), **FAST
            )
    assert len(_ledger(tmp_path).in_doubt()) == 1

    outcomes = await collect_pending(
        credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    (paid,) = sim.generation_ids()
    assert [(o.generation_id, o.status) for o in outcomes] == [(paid, "published")]
    assert sim.counters().submits_accepted == 1
    assert _ledger(tmp_path).in_doubt() == []


async def test_the_sweep_reports_an_in_doubt_submit_and_resolve_attaches_it(
    sim: RelaySimulator, tmp_path: Path, events: Callable[[], list[Any]]
) -> None:
    """The answer is cut after the relay created the generation: collect-pending must say
    so (log, event, artifact); `luma-prefect resolve` attaches the id; the next sweep
    publishes it, and nothing is ever paid twice."""
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("submit",), times=1))
    with pytest.raises(LumaSubmitUncertainError):
        await generate_video(
            prompt="answer lost", credentials=sim.credentials(), destination=str(tmp_path), **FAST
        )
    (intent,) = _ledger(tmp_path).in_doubt()

    sweep = await collect_pending(
        credentials=sim.credentials(), destination=str(tmp_path), return_state=True, **FAST
    )
    assert await sweep.result() == []  # type: ignore[misc]

    emitted = [e for e in events() if e.event == "luma.submit.in-doubt"]
    assert emitted and all(e.resource.id == f"luma.submit.{intent.key}" for e in emitted)
    table = await _artifact("luma-submits-in-doubt", sweep)
    assert table is not None and intent.key in table.data and "answer lost" in table.data

    (paid,) = sim.generation_ids()
    runner = CliRunner()
    listed = runner.invoke(app, ["resolve", "--destination", str(tmp_path)])
    assert listed.exit_code == 0 and intent.key in listed.output
    attached = runner.invoke(
        app,
        ["resolve", intent.key[:10], "--destination", str(tmp_path), "--generation-id", paid],
    )
    assert attached.exit_code == 0, attached.output

    outcomes = await collect_pending(
        credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    assert [(o.generation_id, o.status) for o in outcomes] == [(paid, "published")]
    assert _ledger(tmp_path).in_doubt() == []
    assert sim.counters().submits_accepted == 1


async def test_resolve_abandon_lets_a_later_run_submit_again(
    sim: RelaySimulator, tmp_path: Path
) -> None:
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("submit",), times=1))
    with pytest.raises(LumaSubmitUncertainError):
        await generate_video(
            prompt="given up",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            idempotency_key="k1",
            **FAST,
        )
    (intent,) = _ledger(tmp_path).in_doubt()

    result = CliRunner().invoke(
        app, ["resolve", intent.key, "--destination", str(tmp_path), "--abandon"]
    )

    assert result.exit_code == 0, result.output
    assert _ledger(tmp_path).in_doubt() == []
    published = await generate_video(
        prompt="given up",
        credentials=sim.credentials(),
        destination=str(tmp_path),
        idempotency_key="k1",
        **FAST,
    )
    assert published.generation_id in sim.generation_ids()
    assert sim.counters().submits_accepted == 2  # the user decided; nothing automatic


async def test_an_official_relay_listing_resolves_an_in_doubt_submit(
    make_sim: Callable[..., RelaySimulator],
    drive_waits: Callable[[RelaySimulator], None],
    tmp_path: Path,
) -> None:
    sim = make_sim(style="official")
    drive_waits(sim)
    sim.create_generation(prompt="someone else's", state="completed")
    sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("submit",), times=1))
    with pytest.raises(LumaSubmitUncertainError):
        await generate_video(
            prompt="found by listing",
            credentials=sim.credentials(),
            destination=str(tmp_path),
            **FAST,
        )

    outcomes = await collect_pending(
        credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    paid = sim.generation_ids()[-1]
    assert [(o.generation_id, o.status) for o in outcomes] == [(paid, "published")]
    assert sim.counters().submits_accepted == 1


# -- 4. an answer about another generation is never believed ------------------------------


async def test_an_answer_about_another_generation_is_never_delivered(
    make_sim: Callable[..., RelaySimulator],
    drive_waits: Callable[[RelaySimulator], None],
    tmp_path: Path,
) -> None:
    sim = make_sim(style="task")
    drive_waits(sim)
    stranger = sim.create_generation(prompt="someone else's video", state="completed")
    sim.add_fault(Fault(FaultKind.OTHER_GENERATION, times=2))

    published = await generate_video(
        prompt="my own video", credentials=sim.credentials(), destination=str(tmp_path), **FAST
    )

    assert published.generation_id != stranger
    manifest = json.loads((tmp_path / published.generation_id / "manifest.json").read_text())
    assert manifest["prompt"] == "my own video"
    assert not (tmp_path / stranger).exists()
    assert sim.counters().faults_fired.get("other_generation") == 2
