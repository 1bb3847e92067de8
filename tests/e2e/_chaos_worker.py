"""The chaos test's worker: imports Prefect and luma_prefect once, then forks one child per
job (a `generate_video` run or a `collect_pending` sweep), so that 30+ flow runs cost one
import instead of 30 (about 2 s of CPU each on the test machine).

Run as `python _chaos_worker.py JOBDIR`; jobs arrive as JSON lines on stdin. For each job
the worker writes `JOBDIR/<name>.pid` once the child runs and `JOBDIR/<name>.exit` (its wait
status: the exit code, or minus the signal) once it ended. Every child is the leader of a
session of its own (the test can SIGKILL its group); when stdin closes or SIGTERM arrives,
the worker SIGKILLs every child still running and exits.

A child of a `generate` job may SIGKILL itself (what a power cut or the OOM killer does):
- `{"at": POINT}`: exactly at one point of the run (see `POINTS`);
- `{"phase": PHASE, "delay": s}`: `s` seconds after the run enters PHASE;
- `{"delay": s}`: `s` seconds after the child started.
Before dying it writes `JOBDIR/<name>.killed`: the point or timer, and the phase it was in.

Every child (runs and sweeps) appends to `JOBDIR/audit.log`, one line per event, in the
order they happened: `manifest <id> <pid>` after a manifest.json is written, `published
<id> <pid>` after the ledger marks a generation published. Sweeps also write
`JOBDIR/<name>.in_doubt.json`: the submits their report listed as in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# The phases a run goes through, in order, and the exact kill points in each.
PHASES = ("start", "submit", "record", "wait", "download", "publish", "done")
POINTS = {
    "before-post": "submit",  # intent written, the POST not sent
    "after-answer": "submit",  # the relay accepted it: nothing persisted nor recorded yet
    "before-record": "record",  # Prefect persisted the submit's result; no ledger record
    "after-record": "record",  # recorded, no claim taken yet
    "mid-part": "download",  # the first bytes of a file are in its .part
    "after-commit": "download",  # a first file committed, not yet in .download.json
    "after-manifest": "publish",  # manifest.json written, not marked published
    "before-mark": "publish",  # files verified, the ledger not yet told
    "after-mark": "publish",  # marked published, the claim not released
}


def _put(path: Path, text: str) -> None:
    """Write a whole file at once: the test polls for these and must never read half."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


class Chaos:
    """One child's phase, kill plan and audit trail."""

    def __init__(self, jobdir: Path, name: str, plan: dict[str, Any]) -> None:
        self.jobdir, self.name, self.plan = jobdir, name, plan
        self.phase = "start"
        self._lock = threading.Lock()
        # A timer and a kill point can fire together; the second waits here for the SIGKILL
        # (both once wrote the same temporary file, and the test read an empty note).
        self._dying = threading.Lock()

    def enter(self, phase: str) -> None:
        with self._lock:
            if PHASES.index(phase) <= PHASES.index(self.phase):
                return
            self.phase = phase
        if self.plan.get("phase") == phase:
            self.arm(float(self.plan["delay"]), f"{phase}+{self.plan['delay']:.3f}s")

    def point(self, name: str) -> None:
        if self.plan.get("at") == name:
            self.kill(f"at {name}")

    def arm(self, delay: float, how: str) -> None:
        timer = threading.Timer(delay, self.kill, args=(how,))
        timer.daemon = True
        timer.start()

    def kill(self, how: str) -> None:
        self._dying.acquire()
        note = json.dumps({"how": how, "phase": self.phase})
        _put(self.jobdir / f"{self.name}.killed", note)
        os.kill(os.getpid(), signal.SIGKILL)

    def audit(self, what: str, generation_id: str) -> None:
        line = f"{what} {generation_id} {os.getpid()}\n".encode()
        fd = os.open(self.jobdir / "audit.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one short O_APPEND write: never interleaved with another
        finally:
            os.close(fd)


def _instrument(chaos: Chaos) -> None:
    """Wrap the functions a run passes through to follow its phase, kill it, audit it."""
    import luma_prefect.flows._flows as flows_module
    import luma_prefect.storage._part as part_module
    import luma_prefect.tasks._delivery as delivery_tasks
    from luma_prefect.ledger._records import Ledger
    from luma_prefect.relay._client import LumaClient
    from luma_prefect.storage._local import LocalStorage
    from luma_prefect.storage._part import PartFile

    begin = Ledger.begin_submission

    def begin_submission(self: Ledger, *args: Any, **kwargs: Any) -> bool:
        chaos.enter("submit")
        began = begin(self, *args, **kwargs)
        chaos.point("before-post")
        return began

    submit = LumaClient.submit_generation

    async def submit_generation(self: LumaClient, request: Any) -> Any:
        generation = await submit(self, request)
        chaos.point("after-answer")
        chaos.enter("record")
        return generation

    record = Ledger.record_submitted

    def record_submitted(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        chaos.point("before-record")
        done = record(self, *args, **kwargs)
        chaos.point("after-record")
        chaos.enter("wait")
        return done

    download = delivery_tasks.download_generation_files

    async def download_generation_files(*args: Any, **kwargs: Any) -> Any:
        chaos.enter("download")
        done = await download(*args, **kwargs)
        chaos.enter("publish")
        return done

    write_chunk = part_module._write_chunk

    def write_chunk_then(file: Any, data: Any) -> None:
        write_chunk(file, data)
        chaos.point("mid-part")

    commit = PartFile.commit

    def commit_then(self: PartFile, relpath: str) -> str:
        uri = commit(self, relpath)
        chaos.point("after-commit")
        return uri

    write_bytes = LocalStorage.write_bytes

    def write_bytes_then(self: LocalStorage, relpath: str, data: bytes) -> str:
        uri = write_bytes(self, relpath, data)
        if relpath.endswith("/manifest.json"):
            chaos.audit("manifest", relpath.split("/")[-2])
            chaos.point("after-manifest")
        return uri

    mark = Ledger.mark

    def mark_then(self: Ledger, generation_id: str, status: Any, **kwargs: Any) -> Any:
        if status == "published":
            chaos.point("before-mark")
        done = mark(self, generation_id, status, **kwargs)
        if status == "published":
            chaos.audit("published", generation_id)
            chaos.point("after-mark")
            chaos.enter("done")
        return done

    settle = flows_module.settle_in_doubt

    async def settle_in_doubt(*args: Any, **kwargs: Any) -> Any:
        left = await settle(*args, **kwargs)
        report = [{"key": i.key, "prompt": i.prompt} for i in left]
        _put(chaos.jobdir / f"{chaos.name}.in_doubt.json", json.dumps(report))
        return left

    Ledger.begin_submission = begin_submission  # type: ignore[method-assign]
    LumaClient.submit_generation = submit_generation  # type: ignore[method-assign]
    Ledger.record_submitted = record_submitted  # type: ignore[method-assign]
    delivery_tasks.download_generation_files = download_generation_files  # type: ignore[assignment]
    part_module._write_chunk = write_chunk_then
    PartFile.commit = commit_then  # type: ignore[method-assign]
    LocalStorage.write_bytes = write_bytes_then  # type: ignore[method-assign]
    Ledger.mark = mark_then  # type: ignore[method-assign]
    flows_module.settle_in_doubt = settle_in_doubt  # type: ignore[assignment]


def _child(jobdir: Path, job: dict[str, Any]) -> int:
    from luma_prefect.flows import collect_pending, generate_video

    chaos = Chaos(jobdir, job["name"], job.get("kill") or {})
    _instrument(chaos)
    if "delay" in chaos.plan and "phase" not in chaos.plan:
        chaos.arm(float(chaos.plan["delay"]), f"start+{chaos.plan['delay']:.3f}s")
    args = job["args"]
    try:
        if job["kind"] == "sweep":
            outcomes = asyncio.run(collect_pending(**args))
            print("sweep outcomes:", [(o.generation_id, o.status) for o in outcomes])
        else:
            published = asyncio.run(generate_video(**args))
            print("published", published.generation_id)
    except Exception:
        traceback.print_exc()
        return 3
    return 0


def _fork(jobdir: Path, job: dict[str, Any]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log = os.open(jobdir / f"{job['name']}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        code = _child(jobdir, job)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(jobdir: Path) -> None:
    # Every heavy import before the first fork: the children share them.
    import luma_prefect.flows
    import luma_prefect.storage._local  # noqa: F401

    children: dict[int, str] = {}
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            name = children.pop(pid, None)
            if name is not None:
                _put(jobdir / f"{name}.exit", str(os.waitstatus_to_exitcode(status)))

    stdin = sys.stdin.buffer
    buffer = b""
    while not stopping:
        reap()
        ready, _, _ = select.select([stdin], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(stdin.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                job = json.loads(line)
                pid = _fork(jobdir, job)
                children[pid] = job["name"]
                _put(jobdir / f"{job['name']}.pid", str(pid))
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while children and time.monotonic() < deadline:
        reap()
        time.sleep(0.05)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
