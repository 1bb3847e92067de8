"""The wait engine: poll one generation or thousands until each reaches a wanted state.

One call of `wait_for_generations` (or `follow_generations`, which ids join while it runs)
is one wait, however many polls it makes: the Prefect tasks wrap it in a single task run.
Many ids are polled together through the client's batch route, so a round costs about
`ceil(N / batch_size)` requests; each chunk's answers are taken in as soon as it returns,
and rounds are scheduled start to start, so the detection delay does not grow with N.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from luma_prefect._exceptions import (
    LumaAuthError,
    LumaError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaProtocolError,
    LumaRateLimitError,
    LumaServerError,
    LumaTransportError,
    LumaWaitTimeout,
)
from luma_prefect._ids import check_generation_id
from luma_prefect._models import Generation, GenerationState, VideoAsset
from luma_prefect._retry import RetryPolicy
from luma_prefect.relay._client import LumaClient
from luma_prefect.wait._settings import Clock, SystemClock, WaitSettings, normalise_states

__all__ = [
    "Clock",
    "SystemClock",
    "WaitFeed",
    "WaitRound",
    "WaitSettings",
    "follow_generations",
    "normalise_states",
    "wait_for_generations",
]

# A failed round of polling that may pass: absorbed by the error budget.
_TRANSIENT = (LumaServerError, LumaTransportError, LumaProtocolError, LumaRateLimitError)
# Per-id logging stops being useful (and costs the Prefect API) on large batches.
LOG_EACH_ID_UP_TO = 25


ProgressCallback = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class WaitRound:
    """What one answered round of polling saw, for progress displays."""

    elapsed: float
    total: int
    settled: int
    changed: bool
    # Ids still waiting, by state ("not seen yet" before the relay first answered).
    waiting: dict[str, int]
    # The relay's smallest estimate of the time left, when it gives one.
    estimate_seconds: float | None
    # The last answer about the one id waited for (None on batches).
    last: Generation | None


RoundCallback = Callable[[WaitRound], Awaitable[None]]
_T = TypeVar("_T")


@dataclass
class _Tracked:
    """What the engine knows of one id during a wait."""

    generation_id: str
    joined_at: float = 0.0
    deadline: float = 0.0
    last: Generation | None = None
    link_polls: int = 0
    warned_words: set[str] = field(default_factory=set)


class WaitFeed:
    """Ids that join a running wait, and each one's result as soon as it settles.

    A batch flow adds each generation when its submit returns and awaits its result, while
    one wait (one task run) polls all of them together through the batch route. Each id has
    its own deadline, counted from when it joined. `close()` says no more ids will come:
    the wait ends once every joined id settled.
    """

    def __init__(self) -> None:
        self._joining: list[tuple[str, float | None]] = []
        self._results: dict[str, asyncio.Future[Generation | LumaError]] = {}
        self._closed = False
        self._error: BaseException | None = None
        self._arrived = asyncio.Event()

    def add(
        self, generation_id: str, timeout_seconds: float | None = None
    ) -> asyncio.Future[Generation | LumaError]:
        """Track `generation_id` (for `timeout_seconds`, else the wait's); its result."""
        generation_id = check_generation_id(generation_id)
        future = self._results.get(generation_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._results[generation_id] = future
            if self._error is not None:
                future.set_exception(self._error)
            else:
                self._joining.append((generation_id, timeout_seconds))
                self._arrived.set()
        return future

    def close(self) -> None:
        """No more ids will join."""
        self._closed = True
        self._arrived.set()

    def fail(self, error: BaseException) -> None:
        """The wait broke as a whole: every id not settled yet (or joining later) gets it,
        as a `LumaError` (each generation's outcome, not a crash of the whole batch)."""
        if self._error is not None:
            error = self._error  # the first cause is the one to tell
        elif not isinstance(error, LumaError):
            error = LumaError(
                f"The batch's wait stopped ({type(error).__name__}: {error}). The generation "
                "is in the destination's ledger: the collect-pending deployment finishes it."
            )
        self._error = error
        self._closed = True
        for future in self._results.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be awaiting it any more

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> BaseException | None:
        """Why the wait broke as a whole, once it has (then nothing more should join)."""
        return self._error

    def _take(self) -> list[tuple[str, float | None]]:
        joining, self._joining = self._joining, []
        self._arrived.clear()
        return joining

    async def _arrival(self) -> None:
        await self._arrived.wait()

    def _settle(self, generation_id: str, result: Generation | LumaError) -> None:
        future = self._results.get(generation_id)
        if future is not None and not future.done():
            future.set_result(result)


async def wait_for_generations(
    client: LumaClient,
    generation_ids: Sequence[str],
    settings: WaitSettings,
    *,
    clock: Clock | None = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    on_progress: ProgressCallback | None = None,
    on_round: RoundCallback | None = None,
    return_when: Literal["all", "first"] = "all",
) -> dict[str, Generation | LumaError]:
    """Poll until every id reached a state in `settings.until`, failed, or ran out of time.

    `on_progress(settled, total)` is awaited when an id changed state or settled;
    `on_round(WaitRound)` after every answered round (a progress display throttles it).
    With `return_when="first"` it returns after the first round in which any id settled,
    with only the settled ids: callers process those and wait again for the rest.

    Returns, per id, the `Generation` that reached a target, or the `LumaError` that ended
    its wait (`LumaGenerationFailed`, `LumaWaitTimeout`, `LumaNotFoundError`, or the error
    that exhausted the error budget). One id's failure never loses another's result.
    `LumaAuthError` ends the whole wait at once, raised.
    """
    ids = list(dict.fromkeys(check_generation_id(i) for i in generation_ids))
    feed = WaitFeed()
    for generation_id in ids:
        feed._joining.append((generation_id, None))
    feed.close()
    results = await follow_generations(
        client,
        feed,
        settings,
        clock=clock,
        logger=logger,
        on_progress=on_progress,
        on_round=on_round,
        return_when=return_when,
        log_each=len(ids) <= LOG_EACH_ID_UP_TO,
    )
    return {i: results[i] for i in ids if i in results}


async def follow_generations(
    client: LumaClient,
    feed: WaitFeed,
    settings: WaitSettings,
    *,
    clock: Clock | None = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    on_progress: ProgressCallback | None = None,
    on_round: RoundCallback | None = None,
    return_when: Literal["all", "first"] = "all",
    log_each: bool = False,
) -> dict[str, Generation | LumaError]:
    """Poll every id of `feed`, as they join, until each settled and the feed is closed.

    Each id has `settings.timeout_seconds` (or its own timeout) from when it joined. A
    round polls the ids in chunks of the client's `batch_size`, and each chunk's answers
    are taken in (and settled ids handed to the feed) as soon as that chunk returns, not
    when the whole round does. Rounds are scheduled start to start (the next at the
    previous start plus the interval), so a round's own duration, which grows with the
    number of ids, does not delay detection (#12: 10,000 ids took 1.25x the delay of
    1,000 when both were waited for). Returns every id's result; `LumaAuthError` ends the
    whole wait, raised.
    """
    clock = clock or SystemClock()
    log = logger or logging.getLogger("luma_prefect.wait")
    pending: dict[str, _Tracked] = {}
    results: dict[str, Generation | LumaError] = {}
    started = clock.monotonic()
    interval = settings.poll_interval_seconds
    errors_in_row, first_error_at = 0, None
    total = 0

    while True:
        now = clock.monotonic()
        joined = [(i, t) for i, t in feed._take() if i not in pending and i not in results]
        for generation_id, timeout in joined:
            seconds = settings.timeout_seconds if timeout is None else timeout
            pending[generation_id] = _Tracked(generation_id, joined_at=now, deadline=now + seconds)
        if joined:
            total += len(joined)
            interval = settings.poll_interval_seconds
        if not pending:
            if feed.closed:
                break
            await feed._arrival()
            continue
        # Ids whose deadline has come get this round as their last poll.
        last_round = [t for t in pending.values() if now >= t.deadline]
        settled_before = len(results)
        round_ = _Round(client, pending, results, feed, settings, log, log_each, clock, now)
        await round_.run()
        retry_after = round_.retry_after
        if round_.failed is not None and not isinstance(round_.failed, _TRANSIENT):
            # A refusal a retry cannot mend (e.g. a 400): it ends every pending id's wait,
            # but the ids already settled keep their results.
            _give_up(pending, results, round_.failed, 1, feed)
            last_round = []
        elif round_.failed is not None:
            errors_in_row += 1
            first_error_at = now if first_error_at is None else first_error_at
            log.debug("Polling %d generation(s) failed: %s", len(pending), round_.failed)
            if (
                errors_in_row >= settings.max_consecutive_errors
                or now - first_error_at >= settings.max_error_seconds
            ):
                _give_up(pending, results, round_.failed, errors_in_row, feed)
                last_round = []
        else:
            errors_in_row, first_error_at = 0, None
        if round_.answered:
            changed = round_.changed
            if changed:
                interval = settings.poll_interval_seconds
                if on_progress is not None:
                    await on_progress(len(results), total)
            if not log_each and changed:
                log.info(_summary(pending, results, now - started))
            if on_round is not None:
                await on_round(_round(pending, results, total, now - started, changed))
        for tracked in last_round:
            if tracked.generation_id in pending:
                del pending[tracked.generation_id]
                timed_out = LumaWaitTimeout(
                    tracked.generation_id,
                    timeout_seconds=tracked.deadline - tracked.joined_at,
                    generation=tracked.last,
                    until=tuple(sorted(s.value for s in settings.until)),
                )
                results[tracked.generation_id] = timed_out
                feed._settle(tracked.generation_id, timed_out)
        if return_when == "first" and len(results) > settled_before:
            break
        if not pending:
            continue
        delay = _next_delay(pending.values(), interval, settings, retry_after, errors_in_row)
        interval = min(interval * settings.backoff_factor, settings.max_poll_interval_seconds)
        # Start to start: the round's own duration is part of the interval, not added to it.
        # A relay's Retry-After counts from its answer, though.
        wake = now + delay
        if retry_after:
            wake = max(wake, clock.monotonic() + retry_after)
        wake = min(wake, min(t.deadline for t in pending.values()))
        await clock.sleep(max(wake - clock.monotonic(), 0.0))
    return results


class _Round:
    """One round of polling: every pending id once, chunk by chunk, each chunk's answers
    taken in as soon as it returns."""

    def __init__(
        self,
        client: LumaClient,
        pending: dict[str, _Tracked],
        results: dict[str, Generation | LumaError],
        feed: WaitFeed,
        settings: WaitSettings,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        log_each: bool,
        clock: Clock,
        now: float,
    ) -> None:
        self.client, self.pending, self.results, self.feed = client, pending, results, feed
        self.settings, self.log, self.log_each, self.clock = settings, log, log_each, clock
        self.now = now
        self.changed = False
        self.answered = False
        self.failed: LumaError | None = None
        self.retry_after: float | None = None
        self.single = False

    async def run(self) -> None:
        ids = list(self.pending)
        self.single = len(ids) == 1
        if self.single or not self.client.batch_supported:
            # One call: a single id's GET, or the client's bounded single queries.
            chunks, at_once = [ids], 1
        else:
            size = self.client.batch_size
            chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
            at_once = self.client.max_connections
        gate = asyncio.Semaphore(at_once)
        outcomes = await asyncio.gather(
            *(self._chunk(chunk, gate) for chunk in chunks), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, LumaAuthError):
                raise outcome
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, LumaError):
                    raise outcome
                # The worst failure decides: a final refusal over a passing hiccup.
                if self.failed is None or isinstance(self.failed, _TRANSIENT):
                    self.failed = outcome
                if isinstance(outcome, LumaRateLimitError) and outcome.retry_after:
                    self.retry_after = max(self.retry_after or 0.0, outcome.retry_after)

    async def _chunk(self, chunk: list[str], gate: asyncio.Semaphore) -> None:
        async with gate:
            chunk = [i for i in chunk if i in self.pending]
            if not chunk:
                return
            earliest = min(self.pending[i].deadline for i in chunk)
            found = await _bounded(
                self.client,
                _poll(self.client, chunk) if self.single else self.client.find_generations(chunk),
                earliest - self.clock.monotonic(),
                f"Polling {len(chunk)} generation(s)",
            )
        self.answered = True
        if await _absorb(
            self.client,
            chunk,
            self.pending,
            self.results,
            found,
            self.settings,
            self.log,
            self.log_each,
            self.clock,
            self.now,
        ):
            self.changed = True
        for generation_id in chunk:
            result = self.results.get(generation_id)
            if result is not None:
                self.feed._settle(generation_id, result)


async def _bounded(client: LumaClient, call: Awaitable[_T], seconds_left: float, what: str) -> _T:
    """A relay call of the wait, cut off at most one call's bound (the client's per-request
    deadline) past the wait's deadline: the client's retries, a relay's long Retry-After or
    a video-link lookup must not stretch a wait past it."""
    try:
        return await asyncio.wait_for(call, max(seconds_left, 0.0) + client.timeout_seconds)
    except asyncio.TimeoutError:
        raise LumaTransportError(f"{what} did not finish before the wait's deadline.") from None


async def _poll(client: LumaClient, ids: list[str]) -> dict[str, Generation]:
    if len(ids) == 1:
        try:
            return {ids[0]: await client.get_generation(ids[0])}
        except LumaNotFoundError:
            return {}
    return await client.find_generations(ids)


async def _absorb(
    client: LumaClient,
    ids: list[str],
    pending: dict[str, _Tracked],
    results: dict[str, Generation | LumaError],
    found: dict[str, Generation],
    settings: WaitSettings,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    log_each: bool,
    clock: Clock,
    now: float,
) -> bool:
    """Take the answers about `ids` in (`now`: the round's start); True when any id changed
    state or left the wait."""
    changed = False
    for generation_id in ids:
        tracked = pending.get(generation_id)
        if tracked is None:
            continue
        generation = found.get(generation_id)
        elapsed = now - tracked.joined_at
        if generation is None:
            if tracked.last is None and elapsed >= settings.not_found_grace_seconds:
                results[generation_id] = LumaNotFoundError(
                    f"The relay still does not know generation {generation_id} after "
                    f"{elapsed:.0f} s. Check the id and the credentials' relay.",
                    status_code=404,
                    generation_id=generation_id,
                )
                del pending[generation_id]
                changed = True
            continue
        previous = tracked.last.state if tracked.last else None
        if generation.state is not previous:
            changed = True
            _log_change(log, log_each, generation, previous, elapsed, tracked)
        tracked.last = generation
        if _reached(generation.state, settings.until):
            if generation.state is GenerationState.COMPLETED:
                seconds_left = tracked.deadline - clock.monotonic()
                generation = await _with_video_link(
                    client, generation, tracked, settings, log, seconds_left
                )
                if generation is None:
                    continue
            results[generation_id] = generation
        elif generation.state is GenerationState.FAILED:
            results[generation_id] = LumaGenerationFailed(generation)
        elif generation.state is GenerationState.COMPLETED:
            wanted = ", ".join(sorted(s.value for s in settings.until))
            results[generation_id] = LumaError(
                f"Generation {generation_id} completed, so it can no longer reach {wanted}.",
                generation_id=generation_id,
            )
        else:
            continue
        del pending[generation_id]
        changed = True
    return changed


# The order generations move in: a state past every target ends the wait as well (a wait
# until `processing` must not poll on to its deadline when it only ever saw `completed`).
_ORDER = {GenerationState.PENDING: 0, GenerationState.PROCESSING: 1, GenerationState.COMPLETED: 2}


def _reached(state: GenerationState, until: frozenset[GenerationState]) -> bool:
    rank = _ORDER.get(state)
    return state in until or (rank is not None and any(_ORDER.get(t, 3) <= rank for t in until))


async def _with_video_link(
    client: LumaClient,
    generation: Generation,
    tracked: _Tracked,
    settings: WaitSettings,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    seconds_left: float,
) -> Generation | None:
    """A completed generation with a no-watermark link where the relay can give one.

    None asks for another poll (the link may come a little later); after
    `link_grace_polls` the generation is handed on with whatever link it has.
    """
    video = generation.video
    if (generation.video_raw and generation.video_raw.url) or (video and video.download_url):
        return generation
    try:
        url = await _bounded(
            client,
            client.get_download_url(generation.id),
            seconds_left,
            f"Asking the video link of generation {generation.id}",
        )
    except LumaError as exc:
        if isinstance(exc, LumaAuthError):
            raise
        tracked.link_polls += 1
        if tracked.link_polls <= settings.link_grace_polls:
            log.debug(
                "Generation %s is completed but has no video link yet: %s", generation.id, exc
            )
            return None
        log.warning(
            "Generation %s is completed but the relay gave no no-watermark link (%s); "
            "handing it on with the link it has.",
            generation.id,
            exc,
        )
        return generation
    base = video or VideoAsset()
    return generation.model_copy(update={"video": base.model_copy(update={"download_url": url})})


def _next_delay(
    pending: Iterable[_Tracked],
    interval: float,
    settings: WaitSettings,
    retry_after: float | None,
    errors_in_row: int,
) -> float:
    if errors_in_row:
        # Back off harder while the relay is in trouble, but never past the max interval:
        # the one retry schedule (RetryPolicy), over the wait's own intervals.
        interval = RetryPolicy(
            backoff_seconds=settings.poll_interval_seconds,
            max_backoff_seconds=settings.max_poll_interval_seconds,
            jitter=0.0,
        ).delay(errors_in_row)
    estimates = [
        t.last.estimate_wait_seconds
        for t in pending
        if t.last is not None and t.last.estimate_wait_seconds is not None
    ]
    if estimates and not errors_in_row:
        # The relay's own estimate beats our guess, within our bounds.
        interval = min(
            max(min(estimates), settings.poll_interval_seconds),
            settings.max_poll_interval_seconds,
        )
    return max(interval, retry_after or 0.0)


def _give_up(
    pending: dict[str, _Tracked],
    results: dict[str, Generation | LumaError],
    error: LumaError,
    errors_in_row: int,
    feed: WaitFeed,
) -> None:
    """End every pending id with a copy of the error that exhausted the budget."""
    for generation_id in list(pending):
        gave_up = copy.copy(error)
        gave_up.generation_id = generation_id
        gave_up.message = (
            f"Gave up waiting for generation {generation_id} after {errors_in_row} failed "
            f"poll(s) in a row. The last: {error.message} The generation is not lost: "
            "collect it later by its id."
        )
        gave_up.args = (gave_up.message,)
        # The wait already absorbed its share of trouble: a Prefect retry would restart the
        # whole wait with a fresh deadline.
        gave_up.wait_gave_up = True  # type: ignore[attr-defined]
        results[generation_id] = gave_up
        feed._settle(generation_id, gave_up)
        del pending[generation_id]


def _log_change(
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    log_each: bool,
    generation: Generation,
    previous: GenerationState | None,
    elapsed: float,
    tracked: _Tracked,
) -> None:
    word = generation.raw_state or "?"
    if generation.state is GenerationState.UNKNOWN and word not in tracked.warned_words:
        tracked.warned_words.add(word)
        log.warning(
            "Generation %s: the relay says %r, a state luma_prefect does not know; "
            "treating it as not finished and polling on.",
            generation.id,
            word,
        )
        return
    level = logging.INFO if log_each else logging.DEBUG
    was = f" (was {previous.value})" if previous else ""
    log.log(
        level,
        "Generation %s is %s%s after %.1f s.",
        generation.id,
        generation.state.value,
        was,
        elapsed,
    )


def _round(
    pending: dict[str, _Tracked],
    results: dict[str, Generation | LumaError],
    total: int,
    elapsed: float,
    changed: bool,
) -> WaitRound:
    waiting: dict[str, int] = {}
    for tracked in pending.values():
        state = tracked.last.state.value if tracked.last else "not seen yet"
        waiting[state] = waiting.get(state, 0) + 1
    estimates = [
        t.last.estimate_wait_seconds
        for t in pending.values()
        if t.last is not None and t.last.estimate_wait_seconds is not None
    ]
    only = next(iter(pending.values())) if total == 1 and pending else None
    return WaitRound(
        elapsed=elapsed,
        total=total,
        settled=len(results),
        changed=changed,
        waiting=waiting,
        estimate_seconds=min(estimates) if estimates else None,
        last=only.last if only else None,
    )


def _summary(
    pending: dict[str, _Tracked], results: dict[str, Generation | LumaError], elapsed: float
) -> str:
    counts: dict[str, int] = {}
    for tracked in pending.values():
        state = tracked.last.state.value if tracked.last else "not seen yet"
        counts[state] = counts.get(state, 0) + 1
    done = sum(isinstance(r, Generation) for r in results.values())
    ended = len(results) - done
    waiting = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
    return f"After {elapsed:.0f} s: {done} done, {ended} ended otherwise; waiting: {waiting}."
