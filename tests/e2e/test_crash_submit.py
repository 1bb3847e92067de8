"""A worker SIGKILLed right after the relay accepted a paid submit, before the ledger wrote
it down: the generation is never lost, never paid twice, never silent (issue #11.3).

Each test runs generate-video in a Python process of its own on the stack's Prefect server,
with the process set to SIGKILL itself at one exact moment of the submit (the only way to
hit that moment every time), then runs the collect-pending deployment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from luma_prefect.ledger._records import Ledger
from luma_prefect.storage import storage_for

from ._stack import FAST_POLLS, Stack, eventually

_KILLED_AT = {
    # After Prefect persisted the submit task's result, before the ledger recorded the id.
    "ledger": (
        "from luma_prefect.ledger._records import Ledger\n"
        "Ledger.record_submitted = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
    ),
    # Right after the relay's answer reached the client: nothing persisted, nothing recorded.
    "answer": (
        "from luma_prefect.relay._client import LumaClient\n"
        "original = LumaClient.submit_generation\n"
        "async def answered_then_killed(self, request):\n"
        "    await original(self, request)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "LumaClient.submit_generation = answered_then_killed\n"
    ),
}


async def _killed_run(stack: Stack, destination: Path, prompt: str, moment: str) -> None:
    code = (
        "import asyncio, os, signal\n"
        + _KILLED_AT[moment]
        + "from luma_prefect.flows import generate_video\n"
        f"asyncio.run(generate_video(prompt={prompt!r}, credentials='luma-relay', "
        f"destination={str(destination)!r}, poll_interval_seconds=0.5, "
        "max_poll_interval_seconds=1.0))\n"
    )
    worker = stack.python(f"killed-at-{moment}", code)
    await eventually(lambda: worker.popen.poll() is not None, "the worker to die", 120.0)
    assert worker.popen.returncode == -9, worker.tail()


async def _sweep(stack: Stack, destination: Path) -> None:
    flow_run_id = await stack.run_deployment(
        "collect-pending/collect-pending", destination=str(destination), **FAST_POLLS
    )
    run = await stack.wait_for_final(flow_run_id)
    assert run.state.type.value == "COMPLETED", f"{run.state}\n{stack.report()}"


def _paid_for(stack: Stack, prompt: str) -> list[str]:
    generations: list[dict[str, Any]] = stack.sim("GET", "/generations")
    return [g["id"] for g in generations if (g.get("request") or {}).get("prompt") == prompt]


async def test_killed_before_the_ledger_write_is_resolved_from_the_persisted_result(
    stack: Stack, tmp_path: Path
) -> None:
    destination = tmp_path / "out"
    prompt = "e2e killed before the ledger write: a kite over the dunes"
    await _killed_run(stack, destination, prompt, "ledger")
    (paid,) = _paid_for(stack, prompt)
    ledger = Ledger(storage_for(str(destination)))
    assert len(ledger.in_doubt()) == 1  # the paid submit is known to be in doubt
    assert ledger.get(paid) is None  # the ledger never heard of it

    stack.advance()
    await _sweep(stack, destination)

    record = stack.record(destination, paid)
    assert record["status"] == "published", record
    assert (destination / paid / "manifest.json").is_file()
    assert ledger.in_doubt() == []
    assert stack.counters()["submits_by_prompt"][prompt] == 1


async def test_killed_before_anything_was_kept_is_reported_then_resolved_by_hand(
    stack: Stack, tmp_path: Path
) -> None:
    destination = tmp_path / "out"
    prompt = "e2e killed with the answer in hand: a tram in the fog"
    await _killed_run(stack, destination, prompt, "answer")
    (paid,) = _paid_for(stack, prompt)
    ledger = Ledger(storage_for(str(destination)))
    (intent,) = ledger.in_doubt()

    stack.advance()
    await _sweep(stack, destination)

    assert ledger.get(paid) is None and [i.key for i in ledger.in_doubt()] == [intent.key]
    async with stack.client() as client:
        tables = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["luma-submits-in-doubt"]))
        )
    assert any(intent.key in str(t.data) for t in tables)

    stack.processes.run(
        "resolve",
        [
            sys.executable,
            "-m",
            "luma_prefect.cli",
            "resolve",
            intent.key[:8],
            "--destination",
            str(destination),
            "--generation-id",
            paid,
        ],
        stack.env,
    )
    await _sweep(stack, destination)

    assert stack.record(destination, paid)["status"] == "published"
    assert (destination / paid / "video.mp4").is_file()
    assert ledger.in_doubt() == []
    assert stack.counters()["submits_by_prompt"][prompt] == 1
