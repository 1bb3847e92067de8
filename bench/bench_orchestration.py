"""Benchmark: what Prefect orchestration costs per generation in the batch flows.

    python bench/bench_orchestration.py [--sizes 100,500] [--runs 1] [--source DIR]

For each flow (`generate_videos`, `collect_generations`) and size, one fresh process runs
the flow against a real `prefect server start` (own PREFECT_HOME, SQLite) and the relay
simulator (own process, real clock, fast timings). Measured:

- CPU seconds of the flow process over the flow call (`time.process_time`: the machine is
  shared and noisy, wall time is printed beside it but not judged), per generation;
- task runs and events per generation, counted through the Prefect API after the run
  (polled until the counts stop moving: the server records task runs from events,
  asynchronously), with the events broken down by name; the target on task runs is on
  each generation's steps, besides the batch's one `wait N generations` (500 generations
  make 1,001 task runs: 2.002 per generation in all, 2.000 for the steps);
- peak RSS of the flow process above its baseline (after imports, before the flow): the
  kernel's high-water mark, reset before the flow (no sampling thread to charge CPU to it).

`generate_videos` submits N requests, `--in-flight` at once (generations take 0.2 s
pending + 1 s processing); `collect_generations` collects N generations seeded completed,
so all N settle in the first poll round. Every published video's sha256 is checked
against its manifest after the run.

`--source DIR` runs the flows from another checkout (e.g. `git archive main | tar -x -C
DIR`): how the figures "before" below were taken. `--against DIR` alternates, in each run
and on the same server and simulator, the flows from DIR and from this checkout (DIR
first in even runs, second in odd ones: use an even `--runs`), and prints both side by side
(medians), with the events per generation by name, wall time and the load average of their
runs.

Before this change (main e06165c, 2 cores shared with ~6 other jobs, load average ~15-20,
one run each, 50 in flight):

    flow                   N  CPU ms/gen  task runs/gen  events/gen  peak RSS growth
    generate_videos      100       203.6           4.00       16.07          81.4 MB
    generate_videos      500       238.8           3.98       15.95         109.0 MB
    collect_generations  100       101.8           2.01       10.10         119.0 MB
    collect_generations  500       101.6           2.00       10.02         538.3 MB

(generate_videos at 500: 3 submits timed out in doubt on the starved machine, 497 published;
every other run published all. Events per generation: 3 per task run, plus completed and
published, plus 2 per keyed artifact: `prefect.artifact.created` and
`prefect.artifact-collection.created`.)

Targets (#12): generate_videos at 500: CPU <= 40 ms, task runs <= 2, events <= 8 per
generation; collect_generations at 500 settling at once: peak RSS growth < 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SIM_KEY = "sk-bench-local"
PENDING_SECONDS = 0.2
PROCESSING_SECONDS = 1.0
POLLS = {"poll_interval_seconds": 0.5, "max_poll_interval_seconds": 1.0}

# The figures before this change, from `--source` on main (see the docstring).
BEFORE: dict[tuple[str, int], dict[str, float]] = {
    ("generate_videos", 100): {"cpu_ms": 203.6, "task_runs": 4.00, "events": 16.07, "rss_mb": 81.4},
    ("generate_videos", 500): {
        "cpu_ms": 238.8,
        "task_runs": 3.98,
        "events": 15.95,
        "rss_mb": 109.0,
    },
    ("collect_generations", 100): {
        "cpu_ms": 101.8,
        "task_runs": 2.01,
        "events": 10.10,
        "rss_mb": 119.0,
    },
    ("collect_generations", 500): {
        "cpu_ms": 101.6,
        "task_runs": 2.00,
        "events": 10.02,
        "rss_mb": 538.3,
    },
}

TARGETS = {
    # steps: task runs per generation besides the batch's one wait.
    ("generate_videos", 500): {"cpu_ms": 40.0, "steps": 2.0, "events": 8.0},
    ("collect_generations", 500): {"rss_mb": 150.0},
}


# -- the flow process ------------------------------------------------------------------------


class RssSampler:
    """Peak RSS over a block, from the kernel's own high-water mark (VmHWM), reset on entry.

    No sampling thread: one polling psutil every 20 ms was 3 % of the CPU this bench
    charges to the flow (py-spy, 300 generations), and could miss a peak between samples.
    """

    def __init__(self) -> None:
        self.base = self.peak = _status_kib("VmRSS") * 1024

    def __enter__(self) -> RssSampler:
        # "5" resets the peak RSS to the current RSS (Linux 4.0+, proc(5) clear_refs).
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peak = max(self.base, _status_kib("VmHWM") * 1024)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _without_id(error: str, generation_id: str) -> str:
    # A submit that failed has no generation id: nothing to replace then.
    return error.replace(generation_id, "<id>") if generation_id else error


def child_main(args: argparse.Namespace) -> dict[str, Any]:
    """Run one flow in this process; print what it cost."""
    import gc

    from pydantic import SecretStr

    from luma_prefect import GenerationRequest, LumaRelayCredentials
    from luma_prefect.flows import collect_generations, generate_videos

    # The simulator's media links point at 127.0.0.1: allowed here, refused by default.
    kwargs: dict[str, Any] = {"allow_private_media_hosts": True}
    if "allow_private_media_hosts" not in LumaRelayCredentials.model_fields:
        kwargs = {}  # an older checkout (--source) without the guard
    credentials = LumaRelayCredentials(base_url=args.base_url, api_key=SecretStr(SIM_KEY), **kwargs)
    destination = args.destination
    ids = json.loads(args.ids) if args.ids else []
    gc.collect()
    with RssSampler() as rss:
        cpu, wall = time.process_time(), time.monotonic()
        if args.flow == "generate_videos":
            requests = [GenerationRequest(prompt=f"bench clip {i}") for i in range(args.n)]
            state = generate_videos(
                requests,
                max_concurrent=args.in_flight,
                credentials=credentials,
                destination=destination,
                fail_when="never",
                return_state=True,
                **POLLS,
            )
        else:
            state = collect_generations(
                ids,
                credentials=credentials,
                destination=destination,
                fail_when="never",
                return_state=True,
                **POLLS,
            )
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            state = profiler.runcall(asyncio.run, state)
            profiler.dump_stats(args.profile)
        else:
            state = asyncio.run(state)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    outcomes = state.result() if state.is_completed() else []
    return {
        "flow_run_id": str(state.state_details.flow_run_id),
        "state": state.type.value,
        "published": sum(o.status == "published" for o in outcomes),
        # Why the others were not (a starved machine times submits out: in doubt, not paid
        # twice); the first words of each distinct error.
        "not_published": dict(
            Counter(
                f"{o.status}: {_without_id(o.error or '', o.generation_id)[:160]}"
                for o in outcomes
                if not o.ok
            ).most_common(5)
        ),
        "cpu": cpu,
        "wall": wall,
        "rss_growth_mb": (rss.peak - rss.base) / 1e6,
        "rss_base_mb": rss.base / 1e6,
    }


# -- the driver: server, simulator, counting -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(probe: Any, what: str, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


class Stack:
    """A `prefect server start` and a relay simulator, each in its own process group."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        home = tmp / "prefect-home"
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(
            PREFECT_HOME=str(home),
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
        )
        port = _free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        prefect = str(Path(sys.executable).parent / "prefect")
        self.children: list[subprocess.Popen[bytes]] = []
        self.server = self._start(
            "server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        )
        cli = str(Path(sys.executable).parent / "luma-prefect")
        self.sim_log = tmp / "simulator.log"
        self.simulator = self._start(
            "simulator",
            [
                cli,
                "simulate",
                "--port",
                "0",
                "--key",
                SIM_KEY,
                "--pending-seconds",
                str(PENDING_SECONDS),
                "--processing-seconds",
                str(PROCESSING_SECONDS),
            ],
        )
        _wait_for(self._healthy, "the Prefect server")
        self.env["PREFECT_API_URL"] = self.api_url
        self.sim_url = _wait_for(self._sim_url, "the simulator")

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as out:
            child = subprocess.Popen(
                args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.append(child)
        return child

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _sim_url(self) -> str | None:
        found = re.search(r"LUMA_RELAY_BASE_URL=(\S+)", self.sim_log.read_text(errors="replace"))
        return found.group(1) if found else None

    def seed_completed(self, n: int) -> list[str]:
        with httpx.Client(timeout=30) as http:
            return [
                http.post(
                    f"{self.sim_url}/_simulator/generations",
                    json={"prompt": f"bench seeded {i}", "state": "completed"},
                ).json()["id"]
                for i in range(n)
            ]

    def stop(self) -> None:
        import signal

        for child in reversed(self.children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait(10)

    # -- counting through the API ----------------------------------------------------------

    def task_runs(self, flow_run_id: str, name_like: str | None = None) -> int:
        body: dict[str, Any] = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        if name_like:
            body["task_runs"] = {"name": {"like_": name_like}}
        response = httpx.post(f"{self.api_url}/task_runs/count", json=body, timeout=60)
        response.raise_for_status()
        return int(response.json())

    def events(self, since: str, until: str) -> Counter[str]:
        body = {"filter": {"occurred": {"since": since, "until": until}}}
        response = httpx.post(f"{self.api_url}/events/count-by/event", json=body, timeout=60)
        response.raise_for_status()
        return Counter({row["value"]: int(row["count"]) for row in response.json()})


def _settled(read: Any, what: str, quiet: float = 4.0, timeout: float = 300.0) -> Any:
    """`read()` once it returned the same value for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    print(f"(warning: {what} still moving after {timeout:.0f} s)", file=sys.stderr)
    return last


def _verify(destination: Path) -> int:
    """Every published video matches its manifest's sha256; how many were checked."""
    checked = 0
    for manifest_path in destination.glob("*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        video = manifest["assets"]["video"]
        digest = hashlib.sha256((manifest_path.parent / video["file"]).read_bytes()).hexdigest()
        assert digest == video["sha256"], f"sha256 mismatch in {manifest_path.parent}"
        checked += 1
    return checked


def measure(
    stack: Stack, flow: str, n: int, args: argparse.Namespace, source: str | None = None
) -> dict[str, Any]:
    destination = Path(tempfile.mkdtemp(prefix=f"{flow}-{n}-", dir=stack.tmp))
    ids = stack.seed_completed(n) if flow == "collect_generations" else []
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        flow,
        "--n",
        str(n),
        "--in-flight",
        str(args.in_flight),
        "--base-url",
        stack.sim_url,
        "--destination",
        str(destination),
        "--ids",
        json.dumps(ids),
    ]
    if args.profile:
        command += ["--profile", f"{args.profile}.{flow}.{n}"]
    env = dict(stack.env)
    if source:
        env["PYTHONPATH"] = str(Path(source).resolve())
    since = _iso(time.time() - 1)
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    load_after = os.getloadavg()[0]
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"the {flow} run failed (exit {done.returncode})")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    until = _iso(time.time() + 3600)
    row["task_runs"] = _settled(lambda: stack.task_runs(row["flow_run_id"]), "task runs")
    # The batch's one wait ("wait N generations"): the "two task runs per generation"
    # counts the steps of each generation, beside the one wait of the whole batch.
    row["waits"] = stack.task_runs(row["flow_run_id"], name_like=f"wait {n} generation")
    events = _settled(lambda: stack.events(since, until), "events")
    row["events"] = sum(events.values())
    row["events_by_name"] = dict(events.most_common())
    row["verified"] = _verify(destination)
    row.update(flow=flow, n=n, source=source or str(ROOT), load=(load_before, load_after))
    shutil.rmtree(destination, ignore_errors=True)
    return row


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _fmt_row(flow: str, n: int, figures: dict[str, float] | None) -> str:
    if not figures:
        return f"{flow:<20} {n:>4} {'-':>11} {'-':>14} {'-':>11} {'-':>16}"
    return (
        f"{flow:<20} {n:>4} {figures['cpu_ms']:>11.1f} {figures['task_runs']:>14.2f} "
        f"{figures['events']:>11.2f} {figures['rss_mb']:>13.1f} MB"
    )


def _median(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The median run by CPU (runs are few, the machine is noisy), per generation."""
    r = sorted(rows, key=lambda r: r["cpu"])[len(rows) // 2]
    return {
        "cpu_ms": 1000 * r["cpu"] / n,
        "task_runs": r["task_runs"] / n,
        "steps": (r["task_runs"] - r.get("waits", 0)) / n,
        "events": r["events"] / n,
        "rss_mb": r["rss_growth_mb"],
        "wall": r["wall"],
        "by_name": {name: count / n for name, count in r["events_by_name"].items()},
    }


def _by_name(left: dict[str, float] | None, right: dict[str, float]) -> None:
    """Events per generation by name, both sides, largest first."""
    left = left or {}
    names = sorted(set(left) | set(right), key=lambda k: -max(left.get(k, 0), right.get(k, 0)))
    for name in names:
        a = f"{left[name]:.3f}" if name in left else "-"
        b = f"{right[name]:.3f}" if name in right else "-"
        print(f"      {name:<44} {a:>8} | {b:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,500", help="generations per run, comma-separated")
    parser.add_argument("--flows", default="generate_videos,collect_generations")
    parser.add_argument("--runs", type=int, default=1, help="runs per flow and size")
    parser.add_argument("--in-flight", type=int, default=50, help="generate_videos max_concurrent")
    parser.add_argument("--source", help="run the flows from this checkout instead")
    parser.add_argument("--against", help="alternate each run with the flows of this checkout")
    parser.add_argument("--json", help="also write the raw rows to this file")
    parser.add_argument("--profile", help="cProfile the flow process into this file (+ flow, N)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--destination", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.flow = args.child
        print(json.dumps(child_main(args)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    flows = args.flows.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    stack = Stack(tmp)
    rows = []
    try:
        print(
            f"Prefect server {stack.api_url}, simulator {stack.sim_url} ({PENDING_SECONDS:g} s "
            f"pending + {PROCESSING_SECONDS:g} s processing), polls {POLLS}, "
            f"{args.in_flight} in flight; code from {args.source or ROOT}.\n"
        )
        sources = [args.against, args.source] if args.against else [args.source]
        for run in range(args.runs):
            for n in sizes:
                for flow in flows:
                    # Which tree goes first alternates from run to run: the second run of a
                    # pair meets a server with more rows, and was 13-20 % slower in wall and
                    # CPU whichever tree it ran (500 generations, load 1-2).
                    for source in sources[::-1] if run % 2 else sources:
                        row = measure(stack, flow, n, args, source)
                        rows.append(row)
                        print(
                            f"{flow} n={n} from {row['source']}: {row['state']}, "
                            f"{row['published']} published, {row['verified']} "
                            f"sha256-verified {row['not_published'] or ''}; CPU "
                            f"{row['cpu']:.1f} s, wall {row['wall']:.1f} s; load "
                            f"{row['load'][0]:.1f}->{row['load'][1]:.1f}; {row['task_runs']} "
                            f"task runs; {row['events']} events {row['events_by_name']}; peak "
                            f"RSS +{row['rss_growth_mb']:.1f} MB (base "
                            f"{row['rss_base_mb']:.0f} MB)",
                            flush=True,
                        )
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))

    if args.against:
        left, right = f"from {args.against}", f"from {args.source or ROOT}"
    else:
        left, right = "before", "after"
    print(
        f"\n{'':<25} {left[-58:]:^58} | {right}\n"
        f"{'flow':<20} {'N':>4} {'CPU ms/gen':>11} {'task runs/gen':>14} {'events/gen':>11} "
        f"{'peak RSS +':>16} |"
    )
    ok = True
    for flow in flows:
        for n in sizes:
            mine = [r for r in rows if r["flow"] == flow and r["n"] == n]
            if not mine:
                continue
            theirs = [r for r in mine if args.against and r["source"] == args.against]
            mine = [r for r in mine if r not in theirs]
            after = _median(mine, n)
            before: dict[str, Any] | None = _median(theirs, n) if theirs else BEFORE.get((flow, n))
            print(f"{_fmt_row(flow, n, before)} | {_fmt_row(flow, n, after)}")
            loads = [x for r in mine + theirs for x in r["load"]]
            walls = " | ".join(
                ", ".join(f"{r['wall']:.0f} s" for r in side) for side in (theirs, mine) if side
            )
            print(
                f"    wall per run: {walls}; load average during these runs: "
                f"{min(loads):.1f}-{max(loads):.1f}"
            )
            print("    events per generation by name (median run by CPU):")
            _by_name(before.get("by_name") if before else None, after["by_name"])
            for name, limit in TARGETS.get((flow, n), {}).items():
                good = after[name] <= limit if name != "rss_mb" else after[name] < limit
                ok = ok and good
                verdict = "PASS" if good else "FAIL"
                print(f"    [{verdict}] {name} {after[name]:.2f} (target {limit:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    raise SystemExit(main())
