"""Claims: who may download and publish a generation now, safe across processes and hosts.

A generation's claims are numbered files, `<root>/<generation id>/<n>.json`, and only the
highest number counts. Every change is an exclusive create of the next number: taking a
free or stale claim, or giving one back. Two sweeps that both see a stale claim race for
the same next number, and exactly one wins; nothing is ever deleted, so nobody can remove
a claim another process has just taken.

That is atomic where `Storage.create_exclusive` is: a local folder (`O_EXCL`), and fsspec
filesystems that honour exclusive creation (mode "xb": local, memory). On object stores
without conditional writes, run one sweep at a time.

A claim names the process that took it (machine, PID, start time), so a claim left by a
process that died (SIGKILL, OOM) is taken over at once on the same machine instead of
blocking the generation until it grows stale.

A claim is a lease: it records when it was last renewed and for how long it holds
(`lease_seconds`). Its holder renews it while it works (`renew`, which rewrites the
current number in place), so a delivery slower than the lease keeps its claim; only a
holder dead or silent past its lease is taken over. Each take has a fresh `token`: the
holder checks `holds(lease)` before it publishes, so a holder taken over (after a pause
longer than its lease) never publishes over the new one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from luma_prefect._ids import check_generation_id
from luma_prefect.storage import Storage

__all__ = ["Claims", "Lease"]

# Taking a claim races at most this many times with others' releases and takeovers.
_ATTEMPTS = 3


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    """This machine as its processes see it: host name, boot and PID namespace (on Linux).

    PIDs are only compared between processes that share all three, so a container with the
    host's name (host networking) or a machine rebooted since never judges another's PIDs.
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as boot:
        parts.append(boot.read().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "|".join(parts)


def _process_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a Linux process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _holder() -> dict[str, Any]:
    """What a claim records of the process taking it."""
    stat = _process_stat(os.getpid())
    return {"machine": _machine(), "pid": os.getpid(), "started": stat[1] if stat else None}


def _holder_gone(claim: dict[str, Any]) -> bool:
    """Whether the process that took a claim is known dead: same machine, PID not running.

    False whenever it cannot be told (another machine, no PID, not POSIX): the claim then
    only goes stale with age.
    """
    pid, started = claim.get("pid"), claim.get("started")
    if claim.get("machine") != _machine() or not isinstance(pid, int) or pid <= 0:
        return False
    if os.name != "posix" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: it runs, as another user
        return False
    stat = _process_stat(pid)
    if stat is None:
        return False
    state, start = stat
    # A zombie is dead; another start time means the PID now belongs to someone else.
    return state == "Z" or (isinstance(started, int) and start != started)


def _same_process(claim: dict[str, Any]) -> bool:
    holder = _holder()
    return all(claim.get(key) == holder[key] for key in ("machine", "pid", "started"))


@dataclass(frozen=True)
class Lease:
    """A claim as its holder knows it: which number it wrote, with which token.

    Example:
        ```python
        lease = claims.take(generation_id, "run-1", stale_after=timedelta(minutes=2))
        if lease and claims.holds(lease):
            ...  # still ours: publish
        ```
    """

    generation_id: str
    owner: str
    token: str
    number: int


class Claims:
    """Numbered, exclusive-create claims on generations in one storage folder."""

    def __init__(self, storage: Storage, root: str, *, clock: Callable[[], datetime]) -> None:
        self.storage = storage
        self.root = root
        self._clock = clock

    def take(
        self, generation_id: str, owner: str, *, stale_after: timedelta, force: bool = False
    ) -> Lease | None:
        """The lease when `owner` holds the claim afterwards (it was free, stale, or already
        this process's); None when someone else holds it. `stale_after` is the lease this
        take asks for; another holder's claim is stale after its own lease without renewal.
        `force` takes over a live-looking claim whose holder the caller knows is gone (its
        flow run ended).
        """
        for _ in range(_ATTEMPTS):
            number, current = self._current(generation_id)
            if current is not None and not current.get("released"):
                if current.get("owner") == owner and _same_process(current):
                    return Lease(generation_id, owner, str(current.get("token", "")), number)
                if not force and not self._stale(current, stale_after):
                    return None
            token = secrets.token_hex(8)
            body = {
                "owner": owner,
                "token": token,
                "at": self._clock().isoformat(),
                "lease_seconds": stale_after.total_seconds(),
                **_holder(),
            }
            if self._create(generation_id, number + 1, body):
                return Lease(generation_id, owner, token, number + 1)
        return None

    def renew(self, lease: Lease) -> bool:
        """Push the lease's end forward; False when it is no longer the holder's (taken
        over, released): the holder must then stop and leave the generation alone.

        Example:
            ```python
            if not claims.renew(lease):
                ...  # someone took over: stop
            ```
        """
        number, current = self._current(lease.generation_id)
        if not self._is(lease, number, current):
            return False
        assert current is not None
        body = {**current, "at": self._clock().isoformat()}
        # In place: a taker that read the old time creates the next number and wins anyway.
        path = f"{self._folder(lease.generation_id)}/{number:08d}.json"
        self.storage.write_bytes(path, json.dumps(body).encode())
        return True

    def holds(self, lease: Lease) -> bool:
        """Whether the lease is still the generation's current, unreleased claim.

        Example:
            ```python
            if claims.holds(lease):
                ...  # publish
            ```
        """
        number, current = self._current(lease.generation_id)
        return self._is(lease, number, current)

    def live(self, generation_id: str) -> bool:
        """True when someone holds the claim and is neither silent past its lease nor dead.

        Example:
            ```python
            claims.live(generation_id)  # a delivery or wait is at work on it
            ```
        """
        _, current = self._current(generation_id)
        if current is None or current.get("released"):
            return False
        # A claim without a lease (written by an older version) lives for 15 minutes.
        return not self._stale(current, timedelta(minutes=15))

    @staticmethod
    def _is(lease: Lease, number: int, current: dict[str, Any] | None) -> bool:
        return (
            current is not None
            and number == lease.number
            and not current.get("released")
            and current.get("token") == lease.token
        )

    def owner(self, generation_id: str) -> str | None:
        """Who holds the claim now, if anyone."""
        _, current = self._current(generation_id)
        if current is None or current.get("released"):
            return None
        return str(current.get("owner")) if current.get("owner") else None

    def abandoned(self, generation_id: str) -> bool:
        """True when the claim's holder is known dead (same machine, process gone)."""
        _, current = self._current(generation_id)
        if not current:
            return False
        return not current.get("released") and _holder_gone(current)

    def release(self, generation_id: str, owner: str | Lease) -> None:
        """Give the claim back, if `owner` (a name, or the lease itself) still holds it."""
        number, current = self._current(generation_id)
        if current is None or current.get("released"):
            return
        if isinstance(owner, Lease):
            if not self._is(owner, number, current):
                return
            owner = owner.owner
        elif current.get("owner") != owner:
            return
        body = {"released": True, "by": owner, "at": self._clock().isoformat()}
        self._create(generation_id, number + 1, body)

    def _stale(self, current: dict[str, Any], stale_after: timedelta) -> bool:
        try:
            renewed_at = datetime.fromisoformat(str(current["at"]))
        except (KeyError, ValueError):
            return True
        # The holder's own lease counts: it renews at its own pace, and only silence past
        # it (or death) frees the claim.
        lease = current.get("lease_seconds")
        if isinstance(lease, (int, float)) and lease > 0:
            stale_after = timedelta(seconds=lease)
        return self._clock() - renewed_at >= stale_after or _holder_gone(current)

    def _folder(self, generation_id: str) -> str:
        return f"{self.root}/{check_generation_id(generation_id)}"

    def _create(self, generation_id: str, number: int, body: dict[str, Any]) -> bool:
        path = f"{self._folder(generation_id)}/{number:08d}.json"
        return self.storage.create_exclusive(path, json.dumps(body).encode())

    def _current(self, generation_id: str) -> tuple[int, dict[str, Any] | None]:
        """The highest-numbered claim of a generation, or (-1, None) when it has none."""
        numbers = []
        for path in self.storage.list(self._folder(generation_id)):
            stem = path.rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit():
                numbers.append(int(stem))
        if not numbers:
            return -1, None
        number = max(numbers)
        raw = self.storage.read_bytes(f"{self._folder(generation_id)}/{number:08d}.json")
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        # An unreadable claim counts as stale: taken over by the next number.
        return number, data if isinstance(data, dict) else {}
