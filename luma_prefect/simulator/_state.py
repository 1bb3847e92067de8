"""The simulated relay's memory: generations, clock, faults and counters, behind one lock.

States are computed from the clock on each read, never by background tasks, so thousands
of tracked generations cost nothing until they are asked about.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from luma_prefect.simulator._clock import SimClock
from luma_prefect.simulator._config import Fault, FaultKind, SimulatorConfig
from luma_prefect.simulator._counters import CounterBook, Counters
from luma_prefect.simulator._faults import ActiveFault, FaultBook, Target

__all__ = ["GenerationView", "SimulatorState"]

SEEDABLE_STATES = ("pending", "processing", "completed", "failed")
RATIO_FAILURE = "Generation failed: the upstream job errored"
FAULT_FAILURE = "Frame moderation failed"
# Links are refreshed by the calls that hand links out.
_LINK_ROUTES = ("query", "batch", "download_url")


@dataclass
class _Stored:
    id: str
    seq: int
    prompt: str
    aspect_ratio: str
    created: float
    pending_seconds: float
    processing_seconds: float
    request: dict[str, Any]
    model: str | None
    source_id: str | None
    submitted: bool
    outcome: str | None = None
    failure_reason: str | None = None
    sig: int = 1
    sig_epoch: int = 0


@dataclass(frozen=True)
class GenerationView:
    """One generation as of one read, style-neutral; `_shapes` turns it into wire JSON."""

    id: str
    seq: int
    prompt: str
    aspect_ratio: str
    state: str
    shown_state: str
    failure_reason: str | None
    created_wall: float
    start_wall: float | None
    finish_wall: float | None
    remaining_seconds: float | None
    progress: int
    sig: int
    has_download_url: bool
    request: dict[str, Any]
    model: str | None


class SimulatorState:
    """Everything one simulator remembers; every method is safe from any thread."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        # Requests being answered: live, not test data, so a reset leaves it as it is.
        self._in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything: as new (clock at zero, no generations, faults or counts)."""
        with self._lock:
            self._clock = SimClock(self.config.manual_clock)
            self._wall_zero = time.time()
            self._rng = random.Random(self.config.seed)
            self._generations: dict[str, _Stored] = {}
            self._faults = FaultBook()
            self._link_epoch = 0
            self._counts = CounterBook()
            self._counts.max_in_flight = self._in_flight  # still open: they count on

    # -- clock -------------------------------------------------------------------------

    def now(self) -> float:
        with self._lock:
            return self._clock.now()

    def advance(self, seconds: float) -> float:
        with self._lock:
            return self._clock.advance(seconds)

    def _wall(self, sim_time: float) -> float:
        return self._wall_zero + sim_time

    # -- counters ----------------------------------------------------------------------

    def count_request(self, route: str, peer: Any = None) -> None:
        """One more request on `route`; `peer` (the client's address and port) tells a
        connection kept alive from a new one."""
        with self._lock:
            self._counts.requests[route] += 1
            if peer is not None:
                peer = tuple(peer)
                if peer in self._counts.peers:
                    self._counts.reused[route] += 1
                self._counts.peers.add(peer)

    def begin_api_request(self) -> None:
        """A relay API request arrived: one more in flight (see `max_concurrent_requests`)."""
        with self._lock:
            self._in_flight += 1
            self._counts.max_in_flight = max(self._counts.max_in_flight, self._in_flight)

    def end_api_request(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def count_queries(self, generation_ids: Iterable[str]) -> None:
        with self._lock:
            self._counts.queries.update(generation_ids)

    def count_media(self, generation_id: str) -> None:
        with self._lock:
            self._counts.media[generation_id] += 1

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self._counts.bytes_served += count

    def counters(self) -> Counters:
        with self._lock:
            return self._counts.snapshot(self._faults.fired_by_kind)

    def reset_counters(self) -> None:
        with self._lock:
            self._counts = CounterBook()
            self._counts.max_in_flight = self._in_flight  # still open: they count on
            self._faults.fired_by_kind.clear()

    # -- faults ------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> ActiveFault:
        with self._lock:
            if fault.kind is FaultKind.EXPIRED_LINK:
                self._link_epoch += 1
            return self._faults.add(fault, self._link_epoch)

    def remove_fault(self, fault: Fault | str) -> bool:
        with self._lock:
            return self._faults.remove(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [record.to_dict() for record in self._faults.active()]

    def fire_fault(
        self, kinds: Sequence[FaultKind], route: str, target: Target
    ) -> ActiveFault | None:
        with self._lock:
            return self._faults.fire(kinds, route, target)

    def target_of(self, generation_ids: Sequence[str]) -> Target:
        """The target of a request naming these ids (prompts of the known ones)."""
        with self._lock:
            prompts = [g.prompt for i in generation_ids if (g := self._generations.get(i))]
            return Target(tuple(generation_ids), tuple(prompts))

    # -- generations -------------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        aspect_ratio: str,
        request: dict[str, Any],
        model: str | None = None,
        source_id: str | None = None,
    ) -> str:
        """Create a paid generation (submit or extend); its id."""
        with self._lock:
            cfg = self.config
            # Always two draws per generation, so outcomes do not depend on the jitter setting.
            factor = 1.0 + self._rng.uniform(-cfg.duration_jitter, cfg.duration_jitter)
            doomed = self._rng.random() < cfg.failure_ratio
            stored = self._new(
                prompt,
                aspect_ratio,
                request,
                model,
                source_id,
                created=self._clock.now(),
                pending=cfg.pending_seconds * factor,
                processing=cfg.processing_seconds * factor,
                submitted=True,
            )
            if doomed:
                stored.failure_reason = RATIO_FAILURE
            elif self._faults.fire((FaultKind.FAIL_GENERATION,), None, _target(stored)):
                stored.failure_reason = FAULT_FAILURE
            self._counts.submits += 1
            self._counts.by_prompt[prompt] += 1
            return stored.id

    def create(
        self,
        prompt: str,
        state: str,
        aspect_ratio: str = "16:9",
        failure_reason: str | None = None,
    ) -> str:
        """Seed a generation directly in `state` (not a submit: no counters, no faults)."""
        if state not in SEEDABLE_STATES:
            raise ValueError(f"state must be one of {', '.join(SEEDABLE_STATES)}")
        with self._lock:
            cfg = self.config
            now = self._clock.now()
            ago = {
                "pending": 0.0,
                "processing": cfg.pending_seconds,
                "completed": cfg.pending_seconds + cfg.processing_seconds,
                "failed": cfg.pending_seconds + cfg.processing_seconds,
            }[state]
            stored = self._new(
                prompt,
                aspect_ratio,
                {"prompt": prompt, "aspect_ratio": aspect_ratio},
                None,
                None,
                created=now - ago,
                pending=cfg.pending_seconds,
                processing=cfg.processing_seconds,
                submitted=False,
            )
            if state in ("completed", "failed"):
                stored.outcome = state
                stored.failure_reason = (
                    (failure_reason or FAULT_FAILURE) if state == "failed" else None
                )
            return stored.id

    def _new(
        self,
        prompt: str,
        aspect_ratio: str,
        request: dict[str, Any],
        model: str | None,
        source_id: str | None,
        *,
        created: float,
        pending: float,
        processing: float,
        submitted: bool,
    ) -> _Stored:
        stored = _Stored(
            id=str(uuid.uuid4()),
            seq=len(self._generations) + 1,
            prompt=prompt,
            aspect_ratio=aspect_ratio,
            created=created,
            pending_seconds=pending,
            processing_seconds=processing,
            request=request,
            model=model,
            source_id=source_id,
            submitted=submitted,
            sig_epoch=self._link_epoch,
        )
        self._generations[stored.id] = stored
        return stored

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._generations)

    def exists(self, generation_id: str) -> bool:
        with self._lock:
            return generation_id in self._generations

    def phase(self, generation_id: str) -> str | None:
        """pending / processing / completed / failed, or None for an unknown id."""
        with self._lock:
            stored = self._generations.get(generation_id)
            return None if stored is None else self._phase(stored)

    def _phase(self, stored: _Stored) -> str:
        elapsed = self._clock.now() - stored.created
        if elapsed < stored.pending_seconds:
            return "pending"
        if elapsed < stored.pending_seconds + stored.processing_seconds:
            return "processing"
        if stored.outcome is None:
            # Settled once, on first sight: a FAIL_GENERATION added since submit still counts.
            if stored.failure_reason is None and self._faults.fire(
                (FaultKind.FAIL_GENERATION,), None, _target(stored)
            ):
                stored.failure_reason = FAULT_FAILURE
            stored.outcome = "failed" if stored.failure_reason else "completed"
        return stored.outcome

    def hidden_after_submit(self, generation_id: str, route: str) -> bool:
        """Whether NOT_FOUND_AFTER_SUBMIT hides this generation from this lookup (fires it)."""
        with self._lock:
            stored = self._generations.get(generation_id)
            if stored is None or not stored.submitted:
                return False
            elapsed = self._clock.now() - stored.created
            found = self._faults.fire(
                (FaultKind.NOT_FOUND_AFTER_SUBMIT,),
                route,
                _target(stored),
                lambda record: elapsed < record.fault.seconds,
            )
            return found is not None

    def view(self, generation_id: str, route: str | None = None) -> GenerationView | None:
        """The generation as of now; with a `route`, the faults of that route act on it."""
        with self._lock:
            stored = self._generations.get(generation_id)
            if stored is None:
                return None
            phase = self._phase(stored)
            target = _target(stored)
            shown = phase
            has_download_url = True
            if route is not None:
                if route in _LINK_ROUTES:
                    self._refresh_links(stored, target)
                if phase in ("pending", "processing") and self._faults.fire(
                    (FaultKind.UNKNOWN_STATE,), route, target
                ):
                    shown = "unknown"
                if phase == "completed" and self._faults.fire(
                    (FaultKind.NO_DOWNLOAD_URL,), route, target
                ):
                    has_download_url = False
            return self._make_view(stored, phase, shown, has_download_url)

    def other_view(self, generation_id: str) -> GenerationView:
        """Another generation than `generation_id` (the newest other one, else a stranger)."""
        with self._lock:
            others = [g for g in self._generations.values() if g.id != generation_id]
            if others:
                stored = others[-1]
                return self._make_view(stored, self._phase(stored), self._phase(stored), True)
            view = self.view(generation_id)
            assert view is not None
            return dataclasses.replace(view, id=str(uuid.uuid4()))

    def _refresh_links(self, stored: _Stored, target: Target) -> None:
        stale = self._faults.peek(
            (FaultKind.EXPIRED_LINK,),
            None,
            target,
            lambda record: record.epoch > stored.sig_epoch,
        )
        if stale is not None:
            stored.sig += 1
            stored.sig_epoch = self._link_epoch

    def _make_view(
        self, stored: _Stored, phase: str, shown: str, has_download_url: bool
    ) -> GenerationView:
        total = stored.pending_seconds + stored.processing_seconds
        elapsed = self._clock.now() - stored.created
        terminal = phase in ("completed", "failed")
        if terminal:
            progress = 100
        elif phase == "processing" and stored.processing_seconds > 0:
            done = (elapsed - stored.pending_seconds) / stored.processing_seconds
            progress = max(1, min(99, int(done * 100)))
        else:
            progress = 0
        started = stored.created + stored.pending_seconds
        return GenerationView(
            id=stored.id,
            seq=stored.seq,
            prompt=stored.prompt,
            aspect_ratio=stored.aspect_ratio,
            state=phase,
            shown_state=shown,
            failure_reason=stored.failure_reason if phase == "failed" else None,
            created_wall=self._wall(stored.created),
            start_wall=self._wall(started) if phase != "pending" else None,
            finish_wall=self._wall(stored.created + total) if terminal else None,
            remaining_seconds=None if terminal else max(0.0, total - elapsed),
            progress=progress,
            sig=stored.sig,
            has_download_url=has_download_url,
            request=dict(stored.request),
            model=stored.model,
        )

    def media_access(self, generation_id: str, sig: str | None) -> str:
        """ok / missing (no such generation or not completed) / expired (403)."""
        with self._lock:
            stored = self._generations.get(generation_id)
            if stored is None or self._phase(stored) != "completed":
                return "missing"
            if sig != str(stored.sig):
                return "expired"
            expired = self._faults.fire(
                (FaultKind.EXPIRED_LINK,),
                "media",
                _target(stored),
                lambda record: record.epoch > stored.sig_epoch,
            )
            return "expired" if expired is not None else "ok"


def _target(stored: _Stored) -> Target:
    return Target((stored.id,), (stored.prompt,))
