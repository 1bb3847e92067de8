"""Claims are leases: renewed while their holder works, taken over only when it is silent
past its lease or dead, and fenced by a token so a late holder cannot act (issue #11.4)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from luma_prefect.ledger._claims import Claims
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.storage import Storage, storage_for

GID = "4665a07c-7641-4809-a133-10786201bb56"
LEASE = timedelta(minutes=2)


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return storage_for(str(tmp_path))
    return storage_for(f"memory://lease-test-{tmp_path.name}")


def test_a_renewed_claim_outlives_its_lease_and_keeps_others_out(
    storage: Storage, luma_clock: FakeClock
) -> None:
    claims = Claims(storage, "claims", clock=luma_clock.wall)
    lease = claims.take(GID, "slow-download", stale_after=LEASE)
    assert lease

    # A delivery working for an hour, renewing every 30 s, keeps its claim all along.
    for _ in range(120):
        luma_clock.advance(30)
        assert claims.renew(lease)
        assert claims.live(GID)
        assert claims.take(GID, "sweep", stale_after=LEASE) is None
    assert claims.holds(lease)


def test_a_holder_silent_past_its_lease_is_taken_over_and_fenced_out(
    storage: Storage, luma_clock: FakeClock
) -> None:
    claims = Claims(storage, "claims", clock=luma_clock.wall)
    first = claims.take(GID, "paused", stale_after=LEASE)
    assert first
    luma_clock.advance(LEASE.total_seconds() - 1)
    assert claims.take(GID, "sweep", stale_after=LEASE) is None  # not yet silent enough

    luma_clock.advance(1)
    assert not claims.live(GID)
    second = claims.take(GID, "sweep", stale_after=LEASE)
    assert second and second.token != first.token

    # The paused holder wakes up: it can neither renew, nor pass the fence, nor release.
    assert not claims.renew(first)
    assert not claims.holds(first)
    claims.release(GID, first)
    assert claims.holds(second) and claims.owner(GID) == "sweep"


def test_the_same_owner_in_another_process_is_another_holder(
    storage: Storage, luma_clock: FakeClock
) -> None:
    claims = Claims(storage, "claims", clock=luma_clock.wall)
    body = {
        "owner": "run-1",
        "token": "t1",
        "at": luma_clock.wall().isoformat(),
        "lease_seconds": LEASE.total_seconds(),
        "machine": "other-host",
        "pid": 1,
    }
    assert claims._create(GID, 0, body)

    # A retried run with the same flow run id does not share the live holder's lease.
    assert claims.take(GID, "run-1", stale_after=LEASE) is None


def test_a_released_lease_is_free_and_not_live(storage: Storage, luma_clock: FakeClock) -> None:
    claims = Claims(storage, "claims", clock=luma_clock.wall)
    lease = claims.take(GID, "run-1", stale_after=LEASE)
    assert lease
    claims.release(GID, lease)
    assert not claims.live(GID) and claims.owner(GID) is None
    assert not claims.renew(lease)
