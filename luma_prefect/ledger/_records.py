"""The ledger of submitted generations, kept in the destination storage.

A paid generation is recorded right after the relay accepts it, before any wait; its record
follows it through `completed`, `downloaded` and `published`. A sweep (`collect_pending`)
finishes every recorded generation that is not yet published, whoever submitted it.

Layout under `<destination>/.luma-ledger/`:
- `generations/<id>.json`: one record per generation (written whole, atomically);
- `submits/<key>.json`: one paid submit by its identity (see `_identity.py`), written
  *before* the POST (`sending`), then `recorded` with the generation id the relay gave, or
  `in_doubt` when the answer was lost. A retried run reuses the id instead of paying
  again; a sweep reports (and where it can, resolves) every intent left in doubt;
- `claims/<id>/<n>.json`: who is downloading and publishing it now. Claims are created with an
  exclusive create, so two sweeps never publish one generation twice (see `_claims.py`
  for which storages make that atomic).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._ids import check_generation_id
from luma_prefect._models import Generation, GenerationId, GenerationRequest
from luma_prefect.ledger._claims import Claims, Lease
from luma_prefect.ledger._claims import _holder as process_holder
from luma_prefect.ledger._claims import _holder_gone as holder_gone
from luma_prefect.ledger._identity import submit_identity
from luma_prefect.storage import Storage

__all__ = ["Ledger", "LedgerRecord", "LedgerStatus", "SubmitIntent", "SubmitState"]

LedgerStatus = Literal["submitted", "completed", "downloaded", "published", "failed"]
SubmitState = Literal["sending", "in_doubt", "recorded", "abandoned"]
_ROOT = ".luma-ledger"
_FINISHED: frozenset[str] = frozenset({"published", "failed"})
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")  # never a path
_HEX = re.compile(r"^[0-9a-f]+$")


def _iso(moment: datetime) -> str:
    return moment.isoformat()


class SubmitIntent(BaseModel):
    """One paid submit as the ledger knows it, written before the POST.

    `sending`: the POST is (or was) under way; `in_doubt`: it broke off after it may have
    reached the relay; `recorded`: the relay's answer gave `generation_id`; `abandoned`:
    a user said it created nothing worth keeping.

    Example:
        ```python
        for intent in ledger.in_doubt():
            print(intent.key, intent.state, intent.prompt)
        ```
    """

    key: str
    state: SubmitState = "sending"
    generation_id: str | None = None
    flow_run_id: str | None = None
    scope: str | None = None
    request: dict[str, Any] | None = None
    relay_base_url: str | None = None
    relay_style: str | None = None
    result_key: str | None = None
    holder: dict[str, Any] | None = None
    at: str | None = None
    reason: str | None = None
    resolved: str | None = None
    resolved_at: str | None = None

    @property
    def in_doubt(self) -> bool:
        """Whether the relay may hold a paid generation nobody recorded."""
        return self.state in ("sending", "in_doubt") and not self.generation_id

    @property
    def prompt(self) -> str:
        """The request's prompt, for reports ('' when none)."""
        return str((self.request or {}).get("prompt") or "")

    def started(self) -> datetime | None:
        """When the submit began, if known."""
        try:
            return datetime.fromisoformat(self.at) if self.at else None
        except ValueError:
            return None

    def holder_gone(self) -> bool:
        """True when the process that sent it is known dead (same machine, PID gone)."""
        return bool(self.holder) and holder_gone(self.holder or {})


class LedgerRecord(BaseModel):
    """What the ledger knows of one paid generation."""

    generation_id: GenerationId
    status: LedgerStatus
    request: dict[str, Any] | None = None
    flow_run_id: str | None = None
    relay_base_url: str | None = None
    relay_style: str | None = None
    credentials_block: str | None = None
    """Name of the saved credentials block that submitted it (None: an unsaved block)."""
    error: str | None = None
    history: list[dict[str, str]] = Field(default_factory=list)
    holder: dict[str, Any] | None = None

    def holder_gone(self) -> bool:
        """True when the process that recorded it to go on with it is known dead (same
        machine, PID gone): nobody will claim it after that."""
        return bool(self.holder) and holder_gone(self.holder or {})

    def times(self) -> dict[str, datetime]:
        """When the record reached each status (the latest time for each)."""
        return {entry["status"]: datetime.fromisoformat(entry["at"]) for entry in self.history}


def _json(data: dict[str, Any]) -> bytes:
    # Compact: `indent` makes json fall back from its C encoder to Python's, 2.8x slower
    # (42 against 15 us for a record); records are many per generation, read by programs.
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Ledger:
    """Records of paid generations, in a storage shared by every flow run that uses it."""

    def __init__(self, storage: Storage, *, clock: Callable[[], datetime] = _now) -> None:
        self.storage = storage
        self._clock = clock
        self._claims = Claims(storage, f"{_ROOT}/claims", clock=clock)

    @staticmethod
    def submit_key(
        scope: str, relay: str, request: GenerationRequest, operation: str = "submit"
    ) -> str:
        """The identity of one paid submit (see `luma_prefect.ledger._identity`)."""
        return submit_identity(scope, relay, request, operation)

    def submission(self, key: str) -> SubmitIntent | None:
        """What the ledger knows of the submit with this identity, or None."""
        data = self._read(self._submit_path(key))
        if data is None:
            return None
        try:
            return SubmitIntent.model_validate({**data, "key": key})
        except ValidationError:
            return None

    def find_submission(self, key: str) -> str | None:
        """The generation id recorded for a submission key, if any."""
        intent = self.submission(key)
        return intent.generation_id if intent else None

    def submission_in_doubt(self, key: str) -> bool:
        """True when a submit under this key began but its answer was never recorded.

        The relay may have created (and charged) a generation that nobody knows the id of.
        """
        intent = self.submission(key)
        return intent is not None and intent.in_doubt

    def begin_submission(
        self,
        key: str,
        flow_run_id: str | None,
        *,
        request: GenerationRequest | None = None,
        scope: str | None = None,
        relay_base_url: str | None = None,
        relay_style: str | None = None,
        result_key: str | None = None,
    ) -> bool:
        """Note that a submit under this key is about to be sent (before the paid POST);
        False when another process began the same submit first (send nothing then).

        The intent says enough to find the generation again if the answer is lost: the
        request, the relay, when, which process, and where Prefect persists the result.
        It is created exclusively, so two processes with one identity (two runs given one
        idempotency_key) never both send; only an intent a user abandoned is replaced.
        """
        intent = SubmitIntent(
            key=key,
            state="sending",
            flow_run_id=flow_run_id,
            scope=scope,
            request=request.model_dump(mode="json", exclude_none=True) if request else None,
            relay_base_url=relay_base_url,
            relay_style=relay_style,
            result_key=result_key,
            holder=process_holder(),
            at=self._clock().isoformat(),
        )
        existing = self.submission(key)
        if existing is not None:
            if existing.state != "abandoned":
                return False
            self._write_intent(intent)  # a user abandoned it: a new submit may begin
            return True
        data = intent.model_dump(mode="json", exclude={"key"}, exclude_none=True)
        return self.storage.create_exclusive(self._submit_path(key), _json(data))

    def submission_uncertain(self, key: str, reason: str) -> None:
        """Note why a submit's outcome is unknown (its answer was lost or not believable).

        Example:
            ```python
            ledger.submission_uncertain(key, str(exc))
            ```
        """
        intent = self.submission(key)
        if intent is None or intent.generation_id:
            return
        self._write_intent(intent.model_copy(update={"state": "in_doubt", "reason": reason}))

    def abandon_submission(self, key: str) -> None:
        """Forget a submit that certainly created nothing (refused, or never sent)."""
        self.storage.delete(self._submit_path(key))

    def drop_in_doubt(self, key: str, note: str) -> SubmitIntent:
        """A user's word that an in-doubt submit created nothing worth keeping.

        The intent stays as `abandoned` (no longer reported); a later run with the same
        identity submits again.
        """
        intent = self._doubtful(key)
        dropped = intent.model_copy(
            update={"state": "abandoned", "reason": note, "resolved_at": _iso(self._clock())}
        )
        self._write_intent(dropped)
        return dropped

    def resolve_submission(
        self, key: str, generation: Generation, how: str, *, flow_run_id: str | None = None
    ) -> LedgerRecord:
        """Attach the generation an in-doubt submit created; it is then an ordinary record.

        `flow_run_id`: the run that goes on with it (a retried run); None, the default, lets
        any sweep finish it (the run that sent it died or gave up on it).
        """
        intent = self._doubtful(key)
        request = GenerationRequest.model_validate(intent.request) if intent.request else None
        return self.record_submitted(
            generation,
            key=key,
            request=request,
            flow_run_id=flow_run_id,
            relay_base_url=intent.relay_base_url or "",
            relay_style=intent.relay_style or "",
            resolved=how,
        )

    def in_doubt(self) -> list[SubmitIntent]:
        """Every submit whose outcome is unknown (sending or in doubt), oldest first.

        An intent still `sending` may belong to a run sending right now: see
        `SubmitIntent.holder_gone` and the flow run's state before calling it in doubt.
        """
        found = []
        for path in self.storage.list(f"{_ROOT}/submits"):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".json"):
                intent = self.submission(name[: -len(".json")])
                if intent is not None and intent.in_doubt:
                    found.append(intent)
        return sorted(found, key=lambda i: i.at or "")

    def find_in_doubt(self, prefix: str) -> SubmitIntent:
        """The one in-doubt submit whose key starts with `prefix` (at least 6 characters)."""
        prefix = prefix.strip().lower()
        if len(prefix) < 6 or not _HEX.fullmatch(prefix):
            raise LumaConfigurationError(
                f"{prefix[:60]!r} is not a submit key: give at least 6 hex characters of a "
                "key listed by `luma-prefect resolve`."
            )
        matches = [i for i in self.in_doubt() if i.key.startswith(prefix)]
        if not matches:
            raise LumaConfigurationError(
                f"No submit in doubt has a key starting with {prefix}: list them with "
                "`luma-prefect resolve --destination ...`."
            )
        if len(matches) > 1:
            raise LumaConfigurationError(
                f"{len(matches)} submits in doubt have a key starting with {prefix}: give more "
                "characters."
            )
        return matches[0]

    def record_submitted(
        self,
        generation: Generation,
        *,
        key: str,
        request: GenerationRequest | None,
        flow_run_id: str | None,
        relay_base_url: str,
        relay_style: str,
        resolved: str | None = None,
        credentials_block: str | None = None,
    ) -> LedgerRecord:
        """Record a generation the relay just accepted (call before any wait)."""
        generation_id = generation.id
        record = LedgerRecord(
            generation_id=generation_id,
            status="submitted",
            request=request.model_dump(mode="json", exclude_none=True) if request else None,
            flow_run_id=flow_run_id,
            relay_base_url=relay_base_url,
            relay_style=relay_style,
            credentials_block=credentials_block,
            history=[{"status": "submitted", "at": self._clock().isoformat()}],
            # The process that goes on with it: a sweep need not wait for it once it is dead.
            holder=process_holder() if flow_run_id else None,
        )
        self._write_record(record)
        intent = self.submission(key) or SubmitIntent(key=key, state="recorded")
        update: dict[str, Any] = {"state": "recorded", "generation_id": generation_id}
        if resolved:
            update.update(resolved=resolved, resolved_at=_iso(self._clock()))
        self._write_intent(intent.model_copy(update=update))
        return record

    def get(self, generation_id: str) -> LedgerRecord | None:
        """The record of a generation, or None."""
        data = self._read(self._record_path(generation_id))
        if data is None:
            return None
        try:
            return LedgerRecord.model_validate(data)
        except ValidationError:
            return None

    def mark(
        self, generation_id: str, status: LedgerStatus, *, error: str | None = None
    ) -> LedgerRecord | None:
        """Move a recorded generation to a new status; None if it is not in the ledger."""
        record = self.get(generation_id)
        if record is None:
            return None
        history = [*record.history, {"status": status, "at": self._clock().isoformat()}]
        record = record.model_copy(update={"status": status, "error": error, "history": history})
        self._write_record(record)
        return record

    def updated_at(self, record: LedgerRecord) -> datetime | None:
        """When a record last changed."""
        return max(record.times().values(), default=None)

    def known_generation_ids(self) -> list[str]:
        """Ids of every generation the ledger has a record of, in any status.

        Example:
            ```python
            known = set(ledger.known_generation_ids())
            ```
        """
        names = (p.rsplit("/", 1)[-1] for p in self.storage.list(f"{_ROOT}/generations"))
        return [n[: -len(".json")] for n in names if n.endswith(".json")]

    def unfinished(self) -> list[LedgerRecord]:
        """Every recorded generation not yet published nor failed, oldest first."""
        records = []
        for path in self.storage.list(f"{_ROOT}/generations"):
            name = path.rsplit("/", 1)[-1]
            if not name.endswith(".json"):
                continue
            record = self.get(name[: -len(".json")])
            if record is not None and record.status not in _FINISHED:
                records.append(record)
        return sorted(records, key=lambda r: r.history[0]["at"] if r.history else "")

    def claim(
        self, generation_id: str, owner: str, *, stale_after: timedelta, force: bool = False
    ) -> Lease | None:
        """Take the right to download and publish a generation, as a lease of `stale_after`
        to renew while working (`renew`); None if someone else holds it.

        A claim not renewed within its holder's lease, or whose process is gone from this
        machine (its holder died), is taken over. See `luma_prefect.ledger._claims`.
        """
        return self._claims.take(generation_id, owner, stale_after=stale_after, force=force)

    def renew(self, lease: Lease) -> bool:
        """Renew a held lease; False when it was taken over or released (stop then).

        Example:
            ```python
            ledger.renew(lease)
            ```
        """
        return self._claims.renew(lease)

    def holds(self, lease: Lease) -> bool:
        """Whether `lease` is still the generation's current claim (checked before publishing).

        Example:
            ```python
            ledger.holds(lease)
            ```
        """
        return self._claims.holds(lease)

    def claim_live(self, generation_id: str) -> bool:
        """True when a live holder (renewing within its lease, process not dead) has it.

        Example:
            ```python
            ledger.claim_live(generation_id)
            ```
        """
        return self._claims.live(generation_id)

    def claim_owner(self, generation_id: str) -> str | None:
        """Who holds the claim on a generation now, if anyone."""
        return self._claims.owner(generation_id)

    def claim_abandoned(self, generation_id: str) -> bool:
        """True when a claim is held by a process known to be dead (on this machine)."""
        return self._claims.abandoned(generation_id)

    def release(self, generation_id: str, owner: str | Lease) -> None:
        """Give back a claim `owner` holds; a claim someone else took over is left alone."""
        self._claims.release(generation_id, owner)

    def _submit_path(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise LumaConfigurationError(f"{key[:60]!r} is not a submit key.")
        return f"{_ROOT}/submits/{key}.json"

    def _write_intent(self, intent: SubmitIntent) -> None:
        data = intent.model_dump(mode="json", exclude={"key"}, exclude_none=True)
        self._write(self._submit_path(intent.key), data)

    def _doubtful(self, key: str) -> SubmitIntent:
        intent = self.submission(key)
        if intent is None or not intent.in_doubt:
            state = "unknown" if intent is None else intent.state
            raise LumaConfigurationError(
                f"The submit {key} is not in doubt (it is {state}): nothing to resolve."
            )
        return intent

    def _record_path(self, generation_id: str) -> str:
        return f"{_ROOT}/generations/{check_generation_id(generation_id)}.json"

    def _write_record(self, record: LedgerRecord) -> None:
        self._write(self._record_path(record.generation_id), record.model_dump(mode="json"))

    def _write(self, path: str, data: dict[str, Any]) -> None:
        self.storage.write_bytes(path, _json(data))

    def _read(self, path: str) -> dict[str, Any] | None:
        raw = self.storage.read_bytes(path)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
