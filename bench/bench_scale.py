"""Benchmark: generations per minute and Prefect API calls per generation, by workers.

    python bench/bench_scale.py [--runs 24] [--workers 1 2 4] [--rounds 2]

One Prefect server (`prefect server start`, SQLite, its access log on), the relay simulator
(real clock: pending 0.5 s, processing `--processing` s), the deployments of
deployments/prefect.yaml on a process work pool, a local destination. Each round starts
`--workers` fresh process workers (in empty folders: the flows come from the installed
package), creates `--runs` generate-video runs through the API and waits for all of them.

Rounds alternate (1 2 4 4 2 1 for two rounds), so a machine getting busier over the run
weighs on every worker count alike; each figure is the median of its rounds.

Measured per round, from the first run created to the last run ended:
- generations completed per minute (every run Completed, each published generation's
  files checked against the sha256 of its manifest);
- Prefect API calls per generation: HTTP requests in the server's access log (workers,
  flow runs and this script's own polling, which is subtracted), and events received;
- CPU seconds per generation: server, workers and their flow-run processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SIM_KEY = "sk-bench-scale"
POLLS = {"poll_interval_seconds": 0.5, "max_poll_interval_seconds": 1.0}
_ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) /api/')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Round:
    workers: int
    runs: int
    wall: float
    api_calls: int
    events: int
    cpu: float

    @property
    def per_minute(self) -> float:
        return self.runs / self.wall * 60.0


class Bench:
    def __init__(self, folder: Path, processing: float) -> None:
        self.folder = folder
        self.children: list[subprocess.Popen[bytes]] = []
        home = folder / "prefect-home"
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LUMA_"))}
        self.env.update(
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
            # SQLite under many writers: wait for the lock instead of answering 503.
            PREFECT_SERVER_DATABASE_TIMEOUT="60",
            PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT="60",
        )
        port = _free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.server_log = folder / "server.log"
        self.server = self.start(
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "INFO",
            ],
            self.server_log,
        )
        self.sim_log = folder / "simulator.log"
        self.start(
            [
                str(BIN / "luma-prefect"),
                "simulate",
                "--port",
                "0",
                "--key",
                SIM_KEY,
                "--pending-seconds",
                "0.5",
                "--processing-seconds",
                str(processing),
            ],
            self.sim_log,
        )
        self.destination = folder / "out"

    def start(self, args: list[str], log: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            child = subprocess.Popen(
                args,
                cwd=cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.children.append(child)
        return child

    def run(self, args: list[str], extra: dict[str, str] | None = None) -> None:
        subprocess.run(
            args,
            cwd=REPO,
            env={**self.env, **(extra or {})},
            check=True,
            capture_output=True,
            timeout=600,
        )

    def stop(self, child: subprocess.Popen[bytes], grace: float = 20.0) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(10)

    def close(self) -> None:
        for child in reversed(self.children):
            self.stop(child)

    async def setup(self) -> None:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start: see {self.server_log}")
            await asyncio.sleep(0.5)
        while not (found := re.search(r"LUMA_RELAY_BASE_URL=(\S+)", self.sim_log.read_text())):
            await asyncio.sleep(0.2)
        self.sim_url = found.group(1)
        self.env["PREFECT_API_URL"] = self.api_url
        self.run(
            [str(BIN / "luma-prefect"), "save-credentials", "luma-relay"],
            {"LUMA_RELAY_BASE_URL": self.sim_url, "LUMA_RELAY_API_KEY": SIM_KEY},
        )
        self.run([str(BIN / "prefect"), "work-pool", "create", "luma-pool", "--type", "process"])
        self.run(
            [
                str(BIN / "prefect"),
                "--no-prompt",
                "deploy",
                "--all",
                "--prefect-file",
                str(REPO / "deployments" / "prefect.yaml"),
            ]
        )

    def api_calls(self) -> int:
        return len(_ACCESS.findall(self.server_log.read_text(errors="replace")))

    def cpu(self, workers: list[subprocess.Popen[bytes]]) -> float:
        total = 0.0
        for child in [self.server, *workers]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(child.pid)
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        t = p.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
        return total

    async def round(self, workers: int, runs: int, limit: int) -> Round:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        started_workers = []
        for _ in range(workers):
            folder = Path(tempfile.mkdtemp(prefix="worker-", dir=self.folder))
            started_workers.append(
                self.start(
                    [
                        str(BIN / "prefect"),
                        "worker",
                        "start",
                        "--pool",
                        "luma-pool",
                        "--type",
                        "process",
                        "--limit",
                        str(limit),
                        "--name",
                        f"bench-{uuid.uuid4().hex[:6]}",
                    ],
                    folder / "worker.log",
                    cwd=folder,
                )
            )
        try:
            with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
                async with get_client() as client:
                    await self._workers_online(client, workers)
                    deployment = await client.read_deployment_by_name(
                        "generate-video/generate-video"
                    )
                    calls0, cpu0, t0 = self.api_calls(), self.cpu(started_workers), time.time()
                    ids = []
                    for i in range(runs):
                        run = await client.create_flow_run_from_deployment(
                            deployment.id,
                            parameters={
                                "prompt": f"bench {uuid.uuid4().hex[:8]} {i}",
                                "destination": str(self.destination),
                                **POLLS,
                            },
                        )
                        ids.append(run.id)
                    own = runs  # our creates
                    done: dict[Any, Any] = {}
                    while len(done) < runs:
                        await asyncio.sleep(1.0)
                        for run_id in [i for i in ids if i not in done]:
                            own += 1
                            run = await client.read_flow_run(run_id)
                            if run.state and run.state.is_final():
                                done[run_id] = run
                    cpu1 = self.cpu(started_workers)
                    end = max(r.end_time.timestamp() for r in done.values())
                    calls = self.api_calls() - calls0 - own
                    bad = [r for r in done.values() if r.state.type.value != "COMPLETED"]
                    if bad:
                        raise RuntimeError(f"{len(bad)} run(s) did not complete: {bad[0].state}")
                    events = await self._events(client, t0, end)
            self._verify(len(ids))
            return Round(workers, runs, end - t0, calls, events, cpu1 - cpu0)
        finally:
            for worker in started_workers:
                self.stop(worker)

    async def _workers_online(self, client: Any, count: int) -> None:
        deadline = time.monotonic() + 180
        while True:
            online = [
                w
                for w in await client.read_workers_for_work_pool("luma-pool")
                if w.status and w.status.value == "ONLINE"
            ]
            if len(online) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not come online")
            await asyncio.sleep(0.5)

    async def _events(self, client: Any, start: float, end: float) -> int:
        from datetime import datetime, timezone

        from prefect.events.filters import EventFilter, EventOccurredFilter

        window = EventOccurredFilter(
            since=datetime.fromtimestamp(start, timezone.utc),
            until=datetime.fromtimestamp(end + 1, timezone.utc),
        )
        page = await client.read_events(EventFilter(occurred=window), limit=1)
        return int(page.total)

    def _verify(self, expected_new: int) -> None:
        manifests = sorted(self.destination.glob("*/manifest.json"))
        for path in manifests:
            manifest = json.loads(path.read_text())
            for entry in manifest["assets"].values():
                data = (path.parent / entry["file"]).read_bytes()
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise RuntimeError(f"{path.parent.name}/{entry['file']}: sha256 mismatch")
        self.verified = len(manifests)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24, help="generate-video runs per round")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per worker count")
    parser.add_argument("--limit", type=int, default=8, help="flow runs at once per worker")
    parser.add_argument("--processing", type=float, default=4.0, help="simulated seconds")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    bench = Bench(folder, args.processing)
    order: list[int] = []
    for number in range(args.rounds):
        order += args.workers if number % 2 == 0 else list(reversed(args.workers))
    results: list[Round] = []
    try:
        await bench.setup()
        for workers in order:
            result = await bench.round(workers, args.runs, args.limit)
            results.append(result)
            print(
                f"  round: {workers} worker(s): {result.per_minute:6.1f} gen/min, "
                f"{result.api_calls / result.runs:5.1f} API calls/gen, "
                f"{result.events / result.runs:5.1f} events/gen, "
                f"{result.cpu / result.runs:4.2f} CPU s/gen, wall {result.wall:5.1f} s",
                flush=True,
            )
    finally:
        bench.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\n{args.runs} generate-video runs per round, {args.rounds} round(s) per row, "
        f"median; {os.cpu_count()} CPU(s); files verified against their sha256"
    )
    print("workers | generations/min | API calls/gen | events/gen | CPU s/gen | wall s")
    print("------: | --------------: | ------------: | ---------: | --------: | -----:")
    for workers in args.workers:
        mine = [r for r in results if r.workers == workers]
        print(
            f"{workers:7d} | {statistics.median(r.per_minute for r in mine):15.1f} | "
            f"{statistics.median(r.api_calls / r.runs for r in mine):13.1f} | "
            f"{statistics.median(r.events / r.runs for r in mine):10.1f} | "
            f"{statistics.median(r.cpu / r.runs for r in mine):9.2f} | "
            f"{statistics.median(r.wall for r in mine):6.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
