"""The ledger of paid generations and its claims, on a local folder and on memory://."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from luma_prefect import Generation, GenerationRequest, LumaConfigurationError
from luma_prefect.ledger._claims import Claims
from luma_prefect.ledger._records import Ledger
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.storage import Storage, storage_for

GID = "4665a07c-7641-4809-a133-10786201bb56"
FIFTEEN_MINUTES = timedelta(minutes=15)


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return storage_for(str(tmp_path))
    return storage_for(f"memory://ledger-test-{tmp_path.name}")


@pytest.fixture
def ledger(storage: Storage, luma_clock: FakeClock) -> Ledger:
    return Ledger(storage, clock=luma_clock.wall)


def _record(ledger: Ledger, generation_id: str = GID, run: str = "run-1") -> str:
    request = GenerationRequest(prompt="a fox")
    key = Ledger.submit_key(f"run:{run}", "https://relay|generations", request)
    ledger.record_submitted(
        Generation(id=generation_id, state="pending"),
        key=key,
        request=request,
        flow_run_id=run,
        relay_base_url="https://relay",
        relay_style="generations",
    )
    return key


def test_a_submission_is_found_again_by_its_key(ledger: Ledger) -> None:
    key = _record(ledger)

    assert ledger.find_submission(key) == GID
    other = Ledger.submit_key(
        "run:run-2", "https://relay|generations", GenerationRequest(prompt="a fox")
    )
    assert other != key and ledger.find_submission(other) is None


def test_records_move_through_statuses_and_leave_unfinished_when_published(
    ledger: Ledger, luma_clock: FakeClock
) -> None:
    _record(ledger)
    _record(ledger, "5775b18d-0000-4000-8000-000000000000", run="run-2")
    luma_clock.advance(30)
    ledger.mark(GID, "completed")
    ledger.mark(GID, "published")

    record = ledger.get(GID)
    assert record is not None
    assert [h["status"] for h in record.history] == ["submitted", "completed", "published"]
    assert record.times()["completed"] - record.times()["submitted"] == timedelta(seconds=30)
    assert [r.generation_id for r in ledger.unfinished()] == [
        "5775b18d-0000-4000-8000-000000000000"
    ]
    assert ledger.mark("0f0f0f0f-0000-4000-8000-000000000000", "failed") is None


def test_ids_that_could_leave_the_ledger_folder_are_refused(ledger: Ledger) -> None:
    with pytest.raises(LumaConfigurationError):
        ledger.get("../../etc/passwd")
    with pytest.raises(LumaConfigurationError):
        ledger.claim("../x", "run-1", stale_after=FIFTEEN_MINUTES)


def test_a_held_claim_keeps_others_out_until_released(ledger: Ledger) -> None:
    assert ledger.claim(GID, "run-1", stale_after=FIFTEEN_MINUTES)
    assert ledger.claim(GID, "run-1", stale_after=FIFTEEN_MINUTES)  # its own: still held
    assert not ledger.claim(GID, "run-2", stale_after=FIFTEEN_MINUTES)
    assert ledger.claim_owner(GID) == "run-1"

    ledger.release(GID, "run-2")  # not its claim: nothing happens
    assert ledger.claim_owner(GID) == "run-1"
    ledger.release(GID, "run-1")

    assert ledger.claim_owner(GID) is None
    assert ledger.claim(GID, "run-2", stale_after=FIFTEEN_MINUTES)


def test_a_stale_claim_is_taken_over_and_its_old_holder_cannot_release_it(
    ledger: Ledger, luma_clock: FakeClock
) -> None:
    assert ledger.claim(GID, "run-1", stale_after=FIFTEEN_MINUTES)
    luma_clock.advance(FIFTEEN_MINUTES.total_seconds())

    assert ledger.claim(GID, "run-2", stale_after=FIFTEEN_MINUTES)
    ledger.release(GID, "run-1")  # the late holder comes back: the new claim stands

    assert ledger.claim_owner(GID) == "run-2"


def test_two_sweeps_racing_for_a_stale_claim_cannot_both_win(
    storage: Storage, luma_clock: FakeClock
) -> None:
    first = Claims(storage, "claims", clock=luma_clock.wall)
    second = Claims(storage, "claims", clock=luma_clock.wall)
    assert first.take(GID, "run-0", stale_after=FIFTEEN_MINUTES)
    luma_clock.advance(FIFTEEN_MINUTES.total_seconds())
    # Both read the stale claim (number 0) before either writes: both go for number 1.
    number, current = first._current(GID)
    assert number == 0 and current is not None
    wins = [
        claims._create(GID, number + 1, {"owner": owner, "at": luma_clock.wall().isoformat()})
        for claims, owner in ((first, "run-1"), (second, "run-2"))
    ]

    assert wins == [True, False]
    assert first.owner(GID) == "run-1"


def test_a_claim_of_a_dead_process_on_this_machine_is_taken_over_at_once(
    tmp_path: Path,
) -> None:
    # A child process takes the claim and exits (as a SIGKILLed worker would, claim kept).
    code = (
        "import sys; from datetime import datetime, timedelta, timezone\n"
        "from luma_prefect.ledger._claims import Claims\n"
        "from luma_prefect.storage import storage_for\n"
        "claims = Claims(storage_for(sys.argv[1]), 'claims',"
        " clock=lambda: datetime.now(timezone.utc))\n"
        f"assert claims.take({GID!r}, 'dead-run', stale_after=timedelta(hours=1))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    clock = FakeClock(epoch=datetime.now(timezone.utc))
    claims = Claims(storage_for(str(tmp_path)), "claims", clock=clock.wall)

    assert claims.owner(GID) == "dead-run"
    assert claims.take(GID, "run-2", stale_after=timedelta(hours=1))


def test_a_claim_of_a_live_process_elsewhere_waits_for_its_age(
    storage: Storage, luma_clock: FakeClock
) -> None:
    claims = Claims(storage, "claims", clock=luma_clock.wall)
    body = {
        "owner": "run-1",
        "at": luma_clock.wall().isoformat(),
        "machine": "other-host",
        "pid": 1,
    }
    assert claims._create(GID, 0, body)

    assert not claims.take(GID, "run-2", stale_after=FIFTEEN_MINUTES)
    luma_clock.advance(FIFTEEN_MINUTES.total_seconds())
    assert claims.take(GID, "run-2", stale_after=FIFTEEN_MINUTES)


def test_a_submit_intent_is_in_doubt_until_recorded_resolved_or_abandoned(
    ledger: Ledger, luma_clock: FakeClock
) -> None:
    request = GenerationRequest(prompt="a fox")
    keys = [Ledger.submit_key(f"run:run-{i}", "https://relay|generations", request) for i in "abc"]
    for key in keys:
        ledger.begin_submission(key, "run-1", request=request, relay_base_url="https://relay")
        luma_clock.advance(1)
    ledger.submission_uncertain(keys[1], "HTTP 408")

    assert [i.key for i in ledger.in_doubt()] == keys
    assert ledger.in_doubt()[1].reason == "HTTP 408"
    assert ledger.in_doubt()[0].prompt == "a fox"

    ledger.resolve_submission(keys[0], Generation(id=GID, state="pending"), "by hand")
    ledger.drop_in_doubt(keys[1], "nothing in the task list")

    assert [i.key for i in ledger.in_doubt()] == [keys[2]]
    record = ledger.get(GID)
    assert record is not None and record.flow_run_id is None and record.request
    assert ledger.find_submission(keys[0]) == GID
    assert ledger.find_in_doubt(keys[2][:8]).key == keys[2]
    with pytest.raises(LumaConfigurationError, match="not in doubt"):
        ledger.drop_in_doubt(keys[0], "too late")
    with pytest.raises(LumaConfigurationError, match="No submit in doubt"):
        ledger.find_in_doubt(keys[1][:8])
    with pytest.raises(LumaConfigurationError, match="not a submit key"):
        ledger.find_in_doubt("../x")
