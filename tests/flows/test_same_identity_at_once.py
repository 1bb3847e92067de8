"""Two processes submitting one identity at once (two runs given one idempotency_key) pay
once: the submit intent is created exclusively, and the process that lost the race between
its read and its write sends nothing.

Flow runs on Prefect's embedded API, the simulator over loopback HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from luma_prefect import GenerationRequest, LumaSubmitUncertainError
from luma_prefect.flows import generate_video
from luma_prefect.ledger._records import Ledger, SubmitIntent
from luma_prefect.simulator import RelaySimulator
from luma_prefect.storage import storage_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"poll_interval_seconds": 5.0, "max_poll_interval_seconds": 10.0}


def test_only_one_process_begins_a_submit_until_a_user_abandons_it(tmp_path: Path) -> None:
    request = GenerationRequest(prompt="twins")
    key = Ledger.submit_key("key:twins", "https://relay|generations", request)
    first, second = (Ledger(storage_for(str(tmp_path))) for _ in range(2))

    assert first.begin_submission(key, "run-1", request=request)
    assert not second.begin_submission(key, "run-2", request=request)
    assert first.submission(key).flow_run_id == "run-1"  # type: ignore[union-attr]

    first.drop_in_doubt(key, "nothing in the task list")
    assert second.begin_submission(key, "run-2", request=request)


async def test_a_run_that_lost_the_race_for_an_identity_sends_nothing(
    sim: RelaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This run read "no intent" just before another process wrote its own: the moment the
    two used to both send the paid POST."""
    read = Ledger.submission

    def other_process_wrote_right_after_our_read(self: Ledger, key: str) -> SubmitIntent | None:
        seen = read(self, key)
        if seen is None:
            monkeypatch.setattr(Ledger, "submission", read)
            other = Ledger(storage_for(str(tmp_path)))
            assert other.begin_submission(
                key, "another-run", request=GenerationRequest(prompt="twins")
            )
        return seen

    monkeypatch.setattr(Ledger, "submission", other_process_wrote_right_after_our_read)
    args: dict[str, Any] = {"credentials": sim.credentials(), "destination": str(tmp_path)}

    with pytest.raises(LumaSubmitUncertainError, match="another run with the same identity"):
        await generate_video(prompt="twins", idempotency_key="twins", **args, **FAST)

    assert sim.counters().submits_accepted == 0
    (intent,) = Ledger(storage_for(str(tmp_path))).in_doubt()
    assert intent.flow_run_id == "another-run"  # its intent, untouched
