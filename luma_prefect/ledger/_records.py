"""The ledger of submitted generations, kept in the destination storage.

A paid generation is recorded right after the relay accepts it, before any wait; its record
follows it through `completed`, `downloaded` and `published`. A sweep (`collect_pending`)
finishes every recorded generation that is not yet published, whoever submitted it.

Layout under `<destination>/.luma-ledger/`:
- `generations/<id>.json`: one record per generation (written whole, atomically);
- `submits/<key>.json`: which generation a (flow run, relay, request) submitted, so a
  retried flow run reuses the id instead of paying again;
- `claims/<id>/<n>.json`: who is downloading and publishing it now. Claims are created with an
  exclusive create, so two sweeps never publish one generation twice (see `_claims.py`
  for which storages make that atomic).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from luma_prefect._models import Generation, GenerationRequest, check_generation_id
from luma_prefect.ledger._claims import Claims
from luma_prefect.storage import Storage

__all__ = ["Ledger", "LedgerRecord", "LedgerStatus"]

LedgerStatus = Literal["submitted", "completed", "downloaded", "published", "failed"]
_ROOT = ".luma-ledger"
_FINISHED: frozenset[str] = frozenset({"published", "failed"})


class LedgerRecord(BaseModel):
    """What the ledger knows of one paid generation.

    Example:
        ```python
        record = ledger.get("4665a07c-7641-4809-a133-10786201bb56")
        print(record.status, record.history)
        ```
    """

    generation_id: str
    status: LedgerStatus
    request: dict[str, Any] | None = None
    flow_run_id: str | None = None
    relay_base_url: str | None = None
    relay_style: str | None = None
    credentials_block: str | None = None
    """Name of the saved credentials block that submitted it (None: an unsaved block)."""
    error: str | None = None
    history: list[dict[str, str]] = Field(default_factory=list)

    def times(self) -> dict[str, datetime]:
        """When the record reached each status (the latest time for each).

        Example:
            ```python
            record.times()["submitted"]
            ```
        """
        return {entry["status"]: datetime.fromisoformat(entry["at"]) for entry in self.history}


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Ledger:
    """Records of paid generations, in a storage shared by every flow run that uses it.

    Example:
        ```python
        ledger = Ledger(storage_for("./luma-output"))
        for record in ledger.unfinished():
            print(record.generation_id, record.status)
        ```
    """

    def __init__(self, storage: Storage, *, clock: Callable[[], datetime] = _now) -> None:
        self.storage = storage
        self._clock = clock
        self._claims = Claims(storage, f"{_ROOT}/claims", clock=clock)

    @staticmethod
    def submit_key(
        flow_run_id: str, relay: str, request: GenerationRequest, idempotency_key: str | None
    ) -> str:
        """The key of one submission: equal for a resubmission of the same request.

        Example:
            ```python
            key = Ledger.submit_key(run_id, "https://relay|generations", request, None)
            ```
        """
        parts = (flow_run_id, relay, request.fingerprint(), idempotency_key or "")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]

    def find_submission(self, key: str) -> str | None:
        """The generation id recorded for a submission key, if any.

        Example:
            ```python
            generation_id = ledger.find_submission(key)
            ```
        """
        data = self._read(f"{_ROOT}/submits/{key}.json")
        return str(data["generation_id"]) if data and data.get("generation_id") else None

    def submission_in_doubt(self, key: str) -> bool:
        """True when a submit under this key began but its answer was never recorded.

        The relay may have created (and charged) a generation that nobody knows the id of.

        Example:
            ```python
            if ledger.submission_in_doubt(key):
                ...  # do not submit again blindly
            ```
        """
        data = self._read(f"{_ROOT}/submits/{key}.json")
        return bool(data) and data.get("state") == "sending" and not data.get("generation_id")

    def begin_submission(self, key: str, flow_run_id: str | None) -> None:
        """Note that a submit under this key is about to be sent (before the paid POST).

        Example:
            ```python
            ledger.begin_submission(key, run_id)
            ```
        """
        self._write(
            f"{_ROOT}/submits/{key}.json",
            {"state": "sending", "flow_run_id": flow_run_id, "at": self._clock().isoformat()},
        )

    def abandon_submission(self, key: str) -> None:
        """Forget a submit that certainly created nothing (refused, or never sent).

        Example:
            ```python
            ledger.abandon_submission(key)
            ```
        """
        self.storage.delete(f"{_ROOT}/submits/{key}.json")

    def record_submitted(
        self,
        generation: Generation,
        *,
        key: str,
        request: GenerationRequest,
        flow_run_id: str | None,
        relay_base_url: str,
        relay_style: str,
        credentials_block: str | None = None,
    ) -> LedgerRecord:
        """Record a generation the relay just accepted (call before any wait).

        Example:
            ```python
            ledger.record_submitted(generation, key=key, request=request, flow_run_id=run_id,
                                    relay_base_url=url, relay_style="generations")
            ```
        """
        generation_id = check_generation_id(generation.id)
        record = LedgerRecord(
            generation_id=generation_id,
            status="submitted",
            request=request.model_dump(mode="json", exclude_none=True),
            flow_run_id=flow_run_id,
            relay_base_url=relay_base_url,
            relay_style=relay_style,
            credentials_block=credentials_block,
            history=[{"status": "submitted", "at": self._clock().isoformat()}],
        )
        self._write_record(record)
        self._write(f"{_ROOT}/submits/{key}.json", {"generation_id": generation_id})
        return record

    def get(self, generation_id: str) -> LedgerRecord | None:
        """The record of a generation, or None.

        Example:
            ```python
            ledger.get(generation_id)
            ```
        """
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
        """Move a recorded generation to a new status; None if it is not in the ledger.

        Example:
            ```python
            ledger.mark(generation_id, "downloaded")
            ```
        """
        record = self.get(generation_id)
        if record is None:
            return None
        history = [*record.history, {"status": status, "at": self._clock().isoformat()}]
        record = record.model_copy(update={"status": status, "error": error, "history": history})
        self._write_record(record)
        return record

    def updated_at(self, record: LedgerRecord) -> datetime | None:
        """When a record last changed.

        Example:
            ```python
            ledger.updated_at(record)
            ```
        """
        return max(record.times().values(), default=None)

    def unfinished(self) -> list[LedgerRecord]:
        """Every recorded generation not yet published nor failed, oldest first.

        Example:
            ```python
            ids = [r.generation_id for r in ledger.unfinished()]
            ```
        """
        records = []
        for path in self.storage.list(f"{_ROOT}/generations"):
            name = path.rsplit("/", 1)[-1]
            if not name.endswith(".json"):
                continue
            record = self.get(name[: -len(".json")])
            if record is not None and record.status not in _FINISHED:
                records.append(record)
        return sorted(records, key=lambda r: r.history[0]["at"] if r.history else "")

    def claim(self, generation_id: str, owner: str, *, stale_after: timedelta) -> bool:
        """Take the right to download and publish a generation; False if someone holds it.

        A claim older than `stale_after`, or whose process is gone from this machine (its
        holder died), is taken over. See `luma_prefect.ledger._claims`.

        Example:
            ```python
            if ledger.claim(generation_id, owner=run_id, stale_after=timedelta(minutes=15)):
                ...  # download and publish, then ledger.release(generation_id, run_id)
            ```
        """
        return self._claims.take(generation_id, owner, stale_after=stale_after)

    def claim_owner(self, generation_id: str) -> str | None:
        """Who holds the claim on a generation now, if anyone.

        Example:
            ```python
            holder = ledger.claim_owner(generation_id)
            ```
        """
        return self._claims.owner(generation_id)

    def claim_abandoned(self, generation_id: str) -> bool:
        """True when a claim is held by a process known to be dead (on this machine).

        Example:
            ```python
            ledger.claim_abandoned(generation_id)
            ```
        """
        return self._claims.abandoned(generation_id)

    def release(self, generation_id: str, owner: str) -> None:
        """Give back a claim `owner` holds; a claim someone else took over is left alone.

        Example:
            ```python
            ledger.release(generation_id, run_id)
            ```
        """
        self._claims.release(generation_id, owner)

    def _record_path(self, generation_id: str) -> str:
        return f"{_ROOT}/generations/{check_generation_id(generation_id)}.json"

    def _write_record(self, record: LedgerRecord) -> None:
        self._write(self._record_path(record.generation_id), record.model_dump(mode="json"))

    def _write(self, path: str, data: dict[str, Any]) -> None:
        self.storage.write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())

    def _read(self, path: str) -> dict[str, Any] | None:
        raw = self.storage.read_bytes(path)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
