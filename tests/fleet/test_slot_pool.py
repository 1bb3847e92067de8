"""A batch's shared slots (`relay_slots`) at its edges, over a limit kept in memory: a
request that outlives its batch, a request still waiting when its batch ends, a failed look
for more slots while the batch's own slots serve its requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from luma_prefect.tasks import _throttle
from luma_prefect.tasks._throttle import relay_gate, relay_slots

URL = "https://relay.example"


class _Limit:
    """A global concurrency limit in memory: `hold(k)` waits until k slots are free."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.active = 0
        self.grants: list[int] = []
        self.changed = asyncio.Condition()
        self.asked = asyncio.Event()
        self.reads = 0
        self.reads_fail_from: int | None = None
        self.read_failed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, occupy: int) -> AsyncIterator[None]:
        async with self.changed:
            self.asked.set()
            await self.changed.wait_for(lambda: self.active + occupy <= self.slots)
            self.active += occupy
        self.grants.append(occupy)
        try:
            yield
        finally:
            self.active -= occupy
            async with self.changed:
                self.changed.notify_all()

    async def free(self) -> int:
        self.reads += 1
        if self.reads_fail_from is not None and self.reads >= self.reads_fail_from:
            self.read_failed.set()
            raise ConnectionError("Prefect API unreachable")
        return max(self.slots - self.active, 0)


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> _Limit:
    fake = _Limit(2)

    async def known(name: str) -> None:
        return None

    async def free(pool: object) -> int:
        return await fake.free()

    monkeypatch.setattr(_throttle, "_concurrency", lambda name, occupy: fake.hold(occupy))
    monkeypatch.setattr(_throttle, "_ensure_limit", known)
    monkeypatch.setattr(_throttle._SlotPool, "_free_slots", free)
    return fake


async def test_a_request_that_outlives_its_batch_takes_a_slot_of_its_own(limit: _Limit) -> None:
    """A task started in the batch sends after the batch ended (its gather raised, the
    others went on): it takes a slot of its own, instead of the ended batch taking and
    giving back groups for it without end."""
    gate = relay_gate(URL)
    go = asyncio.Event()

    async def late() -> int:
        await go.wait()
        async with gate():
            return limit.active

    async with relay_slots(URL):
        straggler = asyncio.create_task(late())
        async with gate():
            pass
    go.set()
    async with asyncio.timeout(5):
        assert await straggler == 1
    assert limit.grants == [1, 1]  # the batch's group, then the straggler's own slot
    assert limit.active == 0


async def test_a_request_still_waiting_when_its_batch_ends_is_not_left_hanging(
    limit: _Limit,
) -> None:
    """The limit is full; the batch ends while one of its requests waits for its first
    group (whose acquisition the end cancels): the request waits for a slot of its own."""
    limit.slots = 1
    gate = relay_gate(URL)

    async def request() -> str:
        async with gate():
            return "sent"

    async with limit.hold(1):  # another worker holds the only slot
        async with relay_slots(URL):
            waiting = asyncio.create_task(request())
            await limit.asked.wait()  # the batch's group waits for the slot
        assert not waiting.done()
    async with asyncio.timeout(5):
        assert await waiting == "sent"
    assert limit.active == 0


async def test_a_failed_look_for_more_slots_leaves_the_batch_its_own(limit: _Limit) -> None:
    """The batch's one slot is busy and looking for more fails (the API blinked): the
    requests waiting are sent through the slot the batch holds, not failed."""
    limit.slots = 1
    limit.reads_fail_from = 2  # the first group's look succeeds, the next ones fail
    gate = relay_gate(URL)
    release = asyncio.Event()

    async def request() -> str:
        async with gate():
            await release.wait()
            return "sent"

    async with relay_slots(URL):
        requests = [asyncio.create_task(request()) for _ in range(3)]
        await limit.read_failed.wait()
        release.set()
        async with asyncio.timeout(5):
            results = await asyncio.gather(*requests, return_exceptions=True)
    assert results == ["sent"] * 3
    assert limit.grants == [1]
    assert limit.active == 0


async def test_a_slow_request_does_not_hold_up_the_batch_when_its_group_expires(
    limit: _Limit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group stops taking requests after HOLD_SECONDS and gives its slots back when its
    last request returned; the requests that come meanwhile get a new group at once, not
    after the slowest request of the old one (up to a relay request's 30 s deadline)."""
    now = [0.0]
    monkeypatch.setattr(_throttle, "time", type("Clock", (), {"monotonic": lambda: now[0]}))
    limit.slots = 4
    gate = relay_gate(URL)
    slow_done, quick_done = asyncio.Event(), asyncio.Event()

    async def request(done: asyncio.Event) -> None:
        async with gate():
            await done.wait()

    async with relay_slots(URL):
        slow = asyncio.create_task(request(slow_done))
        quick = asyncio.create_task(request(quick_done))
        try:
            await limit.asked.wait()
            while limit.active < 2:  # both in the batch's first group (of 2)
                await asyncio.sleep(0)
            now[0] = _throttle.HOLD_SECONDS + 1
            quick_done.set()
            await quick
            pool = _throttle._POOL.get()
            assert pool is not None
            while any(group.admitting for group in pool._groups):
                await asyncio.sleep(0)  # the group sees its time is up: it admits no more
            async with asyncio.timeout(5):
                await request(_set())
            assert not slow.done()  # served while the slow one is still in flight
        finally:
            slow_done.set()
            await slow
    assert limit.grants == [2, 1]
    assert limit.active == 0


def _set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


async def test_a_prefect_api_that_never_answers_fails_the_request_unsent_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every network call has a total deadline: the look at the limit too."""
    import prefect.client.orchestration

    # Imported before get_client is patched: Prefect's concurrency services bind it when
    # first imported, and would keep the silent client for every later test in this
    # process (it happened when this test ran before any other used a limit).
    import prefect.concurrency.asyncio

    from luma_prefect import LumaTransportError

    class _Silent:
        async def __aenter__(self) -> _Silent:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def read_global_concurrency_limit_by_name(self, name: str) -> None:
            await asyncio.Event().wait()  # the API never answers

    monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda: _Silent())
    monkeypatch.setattr(_throttle, "_API_SECONDS", 0.01)
    monkeypatch.setattr(_throttle, "_created", set())
    sent = []

    async def request() -> None:
        async with relay_gate(URL)():
            sent.append(1)

    with pytest.raises(LumaTransportError, match="was not sent"):
        await asyncio.wait_for(request(), 30)  # without the bound: the 30 s guard fires
    assert sent == []
