"""Progress artifacts: what a wait, a download or a batch is doing, live in the Prefect UI.

Each display is one Prefect progress artifact (a bar and a line of text), created when its
work starts and updated on a state change (a batch's wait: at most every
`BATCH_CHANGE_EVERY_SECONDS`), else at most every `UPDATE_EVERY_SECONDS`, and once at the
end, so the Prefect API load stays bounded: a wait costs 1 create + at most one update per
poll round (polls grow from 5 s to 30 s apart), a download 1 create + one update per 5 s
+ 1. A progress display that fails never fails the work it shows: its errors are logged at
DEBUG and the display stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from uuid import UUID

from luma_prefect._exceptions import LumaError, LumaGenerationFailed, LumaWaitTimeout
from luma_prefect._models import Generation, GenerationState
from luma_prefect._outcomes import GenerationOutcome
from luma_prefect.delivery._publish import _md
from luma_prefect.tasks._names import short_id
from luma_prefect.wait._engine import WaitRound

__all__ = ["BatchProgress", "DownloadProgress", "WaitProgress", "describe_seconds"]

_log = logging.getLogger("luma_prefect.progress")

#: Fewest seconds between two updates of one display when nothing changed state.
UPDATE_EVERY_SECONDS = 10.0
#: Downloads change nothing but bytes: one update per this many seconds.
DOWNLOAD_UPDATE_EVERY_SECONDS = 5.0
#: A wait for many changes in nearly every round: at most one update per this many seconds
#: even then (one per round was 0.2 `prefect.artifact.updated` per generation; #12).
BATCH_CHANGE_EVERY_SECONDS = 5.0


def describe_seconds(seconds: float) -> str:
    """`45 s`, `2 min 14 s`, `1 h 3 min`: a duration people read at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class _Display:
    """One progress artifact: created once, updated when `due`, never failing the work."""

    def __init__(self, every: float, now: Callable[[], float]) -> None:
        self.every = every
        self.now = now
        self.artifact_id: UUID | None = None
        self.broken = False
        self.updated_at = 0.0
        self.updates = 0

    async def create(self, progress: float, description: str) -> None:
        from prefect.artifacts import acreate_progress_artifact

        try:
            self.artifact_id = await acreate_progress_artifact(
                progress=progress, description=description
            )
            self.updated_at = self.now()
        except Exception as exc:  # no API, no run context: no display, the work goes on
            self.broken = True
            _log.debug("No progress artifact: %r", exc)

    def due(self, changed: bool, change_every: float = 0.0) -> bool:
        if self.artifact_id is None or self.broken:
            return False
        since = self.now() - self.updated_at
        return (changed and since >= change_every) or since >= self.every

    async def update(self, progress: float, description: str) -> None:
        from prefect.artifacts import aupdate_progress_artifact

        if self.artifact_id is None or self.broken:
            return
        # Marked before the call: concurrent callers (a batch's deliveries ending together)
        # all found the display due while one update was in flight, 0.5 updates per
        # generation in bench_orchestration instead of one per 10 s.
        self.updated_at = self.now()
        try:
            await aupdate_progress_artifact(
                self.artifact_id, progress=max(0.0, min(progress, 100.0)), description=description
            )
            self.updates += 1
        except Exception as exc:
            self.broken = True
            _log.debug("Progress artifact update failed; no more updates: %r", exc)


class WaitProgress:
    """The progress artifact of one wait: its state, time waited, the relay's estimate."""

    def __init__(
        self,
        generation_ids: Sequence[str],
        now: Callable[[], float],
        *,
        expected: int | None = None,
    ) -> None:
        """`expected`: a batch's wait, which ids join as it runs (`generation_ids` empty)."""
        self.ids = list(dict.fromkeys(generation_ids))
        self.expected = expected
        self.display = _Display(UPDATE_EVERY_SECONDS, now)
        self.started = now()

    def _single(self) -> bool:
        return self.expected is None and len(self.ids) == 1

    def _what(self) -> str:
        if self._single():
            return f"Generation {short_id(self.ids[0])}"
        return _generations(len(self.ids) if self.expected is None else self.expected)

    async def start(self) -> None:
        await self.display.create(0.0, f"{self._what()}: waiting for the relay's first answer.")

    async def round(self, seen: WaitRound) -> None:
        """Take one round of polling in; update the artifact when due."""
        change_every = 0.0 if self._single() else BATCH_CHANGE_EVERY_SECONDS
        if not self.display.due(seen.changed, change_every):
            return
        await self.display.update(*self._describe(seen))

    def _describe(self, seen: WaitRound) -> tuple[float, str]:
        waited = f"waited {describe_seconds(seen.elapsed)}"
        estimate = (
            f"; the relay estimates {describe_seconds(seen.estimate_seconds)} more"
            if seen.estimate_seconds is not None
            else ""
        )
        if self._single():
            state = seen.last.raw_state or seen.last.state.value if seen.last else "not seen yet"
            return self._single_progress(
                seen
            ), f"{self._what()} is {_md(state)}: {waited}{estimate}."
        waiting = [f"{n} {_md(state)}" for state, n in sorted(seen.waiting.items())]
        # A batch's wait: ids join as their submits return, so count the expected total.
        total = max(seen.total, self.expected or 0)
        if total > seen.total:
            waiting.append(f"{total - seen.total} not submitted yet")
        return (
            100.0 * seen.settled / max(total, 1),
            f"{seen.settled} of {_generations(total)} settled; waiting: "
            f"{', '.join(waiting) or 'none'}; {waited}{estimate}.",
        )

    @staticmethod
    def _single_progress(seen: WaitRound) -> float:
        state = seen.last.state if seen.last else None
        if state is GenerationState.PROCESSING and seen.estimate_seconds is not None:
            # The relay's own estimate: the share of the time it expects that has passed.
            share = seen.elapsed / max(seen.elapsed + seen.estimate_seconds, 1e-9)
            return min(max(100.0 * share, 10.0), 95.0)
        return {GenerationState.PENDING: 5.0, GenerationState.PROCESSING: 50.0}.get(
            state or GenerationState.PENDING, 5.0
        )

    async def finish(self, results: Mapping[str, Generation | LumaError | None]) -> None:
        """The last update: how the wait ended, for each id or in counts."""
        took = describe_seconds(self.display.now() - self.started)
        if self._single():
            result = results.get(self.ids[0])
            await self.display.update(100.0, f"{self._what()} {_ended(result)} after {took}.")
            return
        ids = self.ids or list(results)
        counts: dict[str, int] = {}
        for generation_id in ids:
            word = _ended(results.get(generation_id)).split(":")[0]
            counts[word] = counts.get(word, 0) + 1
        summary = ", ".join(f"{n} {word}" for word, n in sorted(counts.items()))
        settled = sum(results.get(i) is not None for i in ids)
        await self.display.update(
            100.0 * settled / max(len(ids), 1),
            f"{settled} of {_generations(len(ids))} settled after {took}: {summary}.",
        )

    async def fail(self, error: BaseException) -> None:
        took = describe_seconds(self.display.now() - self.started)
        await self.display.update(
            0.0, f"{self._what()}: the wait broke off after {took}: {_md(str(error)[:300])}"
        )


def _ended(result: Generation | LumaError | None) -> str:
    if result is None:
        return "still waiting"
    if isinstance(result, Generation):
        return f"is {_md(result.state.value)}"
    if isinstance(result, LumaGenerationFailed):
        reason = result.generation.failure_reason if result.generation else None
        return "failed" + (f": {_md(reason[:200])}" if reason else "")
    if isinstance(result, LumaWaitTimeout):
        return "timed out"
    return "ended with an error"


class DownloadProgress:
    """The progress artifact of one download: bytes of all its files together."""

    def __init__(
        self,
        generation_id: str,
        now: Callable[[], float] = time.monotonic,
        *,
        after_seconds: float = 0.0,
    ) -> None:
        """`after_seconds`: the artifact is created only once the download ran that long."""
        self.generation_id = generation_id
        self.display = _Display(DOWNLOAD_UPDATE_EVERY_SECONDS, now)
        self.started = now()
        self.after_seconds = after_seconds
        self.done: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}

    def _what(self) -> str:
        return f"Download of generation {short_id(self.generation_id)}"

    async def start(self) -> None:
        if self.after_seconds <= 0:
            await self.display.create(0.0, f"{self._what()}: starting.")

    async def bytes(self, name: str, done: int, total: int | None) -> None:
        """`on_progress(asset, bytes_done, total)` of the download engine."""
        self.done[name] = done
        self.totals[name] = total
        late = self.display.artifact_id is None and not self.display.broken
        if late and self.display.now() - self.started >= self.after_seconds:
            await self.display.create(0.0, f"{self._what()}: started {self._since()} ago.")
        if not self.display.due(changed=False):
            return
        known = [n for n, t in self.totals.items() if t]
        share = (
            sum(self.done[n] for n in known) / sum(self.totals[n] or 0 for n in known)
            if known
            else 0.0
        )
        files = ", ".join(
            f"{_md(n)} {_megabytes(self.done[n])}"
            + (f" of {_megabytes(t)}" if (t := self.totals[n]) else "")
            for n in self.done
        )
        await self.display.update(min(100.0 * share, 99.0), f"{self._what()}: {files}.")

    def _since(self) -> str:
        return describe_seconds(self.display.now() - self.started)

    async def finish(self, files: int, size: int) -> None:
        took = describe_seconds(self.display.now() - self.started)
        await self.display.update(
            100.0, f"{self._what()}: {files} file(s), {_megabytes(size)}, in {took}."
        )

    async def fail(self, error: BaseException) -> None:
        await self.display.update(0.0, f"{self._what()} failed: {_md(str(error)[:300])}")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


class BatchProgress:
    """The progress artifact of a batch flow: generations done of the total."""

    def __init__(self, total: int, now: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.display = _Display(UPDATE_EVERY_SECONDS, now)
        self.started = now()
        self.counts: dict[str, int] = {}

    async def start(self) -> None:
        await self.display.create(0.0, f"0 of {_generations(self.total)} done.")

    async def add(self, outcome: GenerationOutcome) -> None:
        """One generation ended (published or not)."""
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        if self.display.due(changed=False):
            await self.display.update(*self._describe())

    def _describe(self) -> tuple[float, str]:
        done = sum(self.counts.values())
        took = describe_seconds(self.display.now() - self.started)
        summary = ", ".join(
            f"{n} {status.replace('_', ' ')}" for status, n in sorted(self.counts.items())
        )
        return (
            100.0 * done / max(self.total, 1),
            f"{done} of {_generations(self.total)} done after {took}"
            + (f" ({summary})." if summary else "."),
        )

    async def finish(self) -> None:
        await self.display.update(*self._describe())


def _generations(n: int) -> str:
    return f"{n} generation" if n == 1 else f"{n} generations"
