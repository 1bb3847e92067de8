"""Benchmark: track thousands of Luma generations at once, our wait engine against naive polling.

    python bench/bench_wait.py [--n 1000] [--big-n 10000] [--naive-n 200] [--pairs 2]

Two approaches, each run in a fresh process against a fresh relay simulator (own process,
real clock; generations take `--pending` + `--processing` seconds, spread by `--jitter`):

- engine: `luma_prefect.wait._engine.wait_for_generations` over the batch route (chunks of
  `--batch`), constant poll interval `--poll`;
- naive:  what Luma's docs show, one `GET /generations/{id}` per generation every `poll`
  seconds (start to start, as the engine), one coroutine per generation, the same
  `LumaClient`, a semaphore of `--naive-concurrency` in front of it (no pile-up of GETs).

Honesty checks, printed: the naive baseline keeps its pace (its mean interval between two
GETs of one generation within 10 % of `--poll`; it tracks `--naive-n` generations, as many
as this machine can poll at that pace) and the simulator is not the bottleneck (its CPU
under 80 % of a core while tracked). Ratios (requests per generation, naive / engine) come
from paired runs, alternating which goes first; the median and the worst pair are shown.
Memory is the peak RSS above the tracking process's RSS right after its imports.

Detection delay: between a generation becoming terminal at the relay (its completion time
in the simulator's store) and the tracker learning it. The engine also tracks `--big-n`
generations: its mean delay must stay within 10 % of the `--n` case (poll rounds are
scheduled start to start, so a round's own duration does not add to the delay, #12).

Exit status 0 when every target holds: at least 20x fewer requests per generation than
naive (worst pair), engine mean delay no more than one poll interval, 10,000 within 10 % of
1,000, peak RSS growth under 250 MB, and the honesty checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REQUEST_RATIO_TARGET = 20.0
RSS_TARGET_MB = 250.0
DELAY_GROWTH_TARGET = 1.10
PACE_TOLERANCE = 1.10
SIMULATOR_CPU_LIMIT = 0.80
_QUERY_ROUTES = ("query", "batch", "download_url")


# -- the simulator, in a process of its own --------------------------------------------------


def _simulator_main(config: dict[str, Any], pipe: Any) -> None:
    """Serve a relay simulator; answer commands over `pipe` until told to stop."""
    from luma_prefect.simulator import RelaySimulator, SimulatorConfig

    simulator = RelaySimulator(SimulatorConfig(**config)).start()
    # Without TCP_NODELAY every keep-alive answer of the simulator stalls ~40 ms on a
    # delayed ACK (headers and body leave as two segments); accepted sockets inherit it.
    listening = getattr(simulator, "_socket", None)
    if isinstance(listening, socket.socket):
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pipe.send({"base_url": simulator.base_url, "api_key": simulator.api_key})
    state = simulator._state  # the simulator's store: completion times live there
    try:
        while True:
            command = pipe.recv()
            if command == "stop":
                break
            if command == "reset":
                simulator.reset_counters()
                pipe.send(True)
            elif command == "counters":
                pipe.send(simulator.counters().to_dict())
            elif command == "completions":
                # Monotonic clock of this machine at which each generation turned terminal:
                # the simulated clock is time.monotonic() - start on a real (non-manual) clock.
                start = state._clock._start + state._clock._offset
                with state._lock:
                    pipe.send(
                        {
                            g.id: start + g.created + g.pending_seconds + g.processing_seconds
                            for g in state._generations.values()
                        }
                    )
    finally:
        simulator.stop()


class SimulatorProcess:
    def __init__(self, **config: Any) -> None:
        context = mp.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_simulator_main, args=(config, child), daemon=True)
        self._process.start()
        self.pid = self._process.pid
        info = self._pipe.recv()
        self.base_url: str = info["base_url"]
        self.api_key: str = info["api_key"]

    def ask(self, command: str) -> Any:
        self._pipe.send(command)
        return self._pipe.recv()

    def stop(self) -> None:
        self._pipe.send("stop")
        self._process.join(15)
        if self._process.is_alive():
            self._process.terminate()


# -- measuring ------------------------------------------------------------------------------


class RssSampler:
    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


async def _submit_all(client: Any, n: int) -> list[str]:
    from luma_prefect import GenerationRequest

    # A bounded number at once: 10,000 coroutines queued on httpx's pool cost it quadratic
    # CPU (a 10,000-submit phase ran for 10 minutes at one core).
    gate = asyncio.Semaphore(50)

    async def one(index: int) -> str:
        request = GenerationRequest(prompt=f"bench generation {index}")
        async with gate:
            return (await client.submit_generation(request)).id

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def _watch_terminal(client: Any, detected: dict[str, float]) -> None:
    """Note when each id is first seen terminal in an answer the tracker received."""
    find, get = client.find_generations, client.get_generation

    def note(generation: Any) -> None:
        if generation.is_terminal and generation.id not in detected:
            detected[generation.id] = time.monotonic()

    async def find_generations(ids: Any) -> Any:
        found = await find(ids)
        for generation in found.values():
            note(generation)
        return found

    async def get_generation(generation_id: str) -> Any:
        generation = await get(generation_id)
        note(generation)
        return generation

    client.find_generations = find_generations
    client.get_generation = get_generation


async def _track_engine(client: Any, ids: list[str], poll: float, batch: int) -> dict[str, Any]:
    from luma_prefect.wait._engine import SystemClock, WaitSettings, wait_for_generations

    detected: dict[str, float] = {}
    _watch_terminal(client, detected)
    progress: list[int] = []

    async def on_progress(done: int, total: int) -> None:
        # Settled ids leave the wait in the round whose answer showed them terminal.
        assert done <= len(detected), (done, len(detected))
        progress.append(done)

    settings = WaitSettings(
        timeout_seconds=900.0, poll_interval_seconds=poll, max_poll_interval_seconds=poll
    )
    results = await wait_for_generations(
        client, ids, settings, clock=SystemClock(), on_progress=on_progress
    )
    return {"detected": detected, "settled": len(results), "rounds_with_news": len(progress)}


async def _track_naive(
    client: Any, ids: list[str], poll: float, concurrency: int
) -> dict[str, Any]:
    from luma_prefect import LumaError

    detected: dict[str, float] = {}
    gate = asyncio.Semaphore(concurrency)
    intervals: list[float] = []

    async def follow(generation_id: str) -> None:
        last_get: float | None = None
        while True:
            async with gate:
                now = time.monotonic()
                if last_get is not None:
                    intervals.append(now - last_get)
                last_get = now
                try:
                    generation = await client.get_generation(generation_id)
                except LumaError:
                    generation = None
            if generation is not None and generation.is_terminal:
                detected[generation_id] = time.monotonic()
                return
            # Start to start, as the engine: the GET's own time is not added to the pace.
            await asyncio.sleep(max(last_get + poll - time.monotonic(), 0.0))

    await asyncio.gather(*(follow(i) for i in ids))
    return {
        "detected": detected,
        "settled": len(detected),
        "rounds_with_news": None,
        "mean_interval": statistics.fmean(intervals) if intervals else math.nan,
    }


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    """One approach, in this process: submit, track, measure; a JSON-ready summary."""
    import psutil

    from luma_prefect import LumaClient

    base_rss = psutil.Process().memory_info().rss  # after the imports above
    simulator = SimulatorProcess(
        pending_seconds=args.pending,
        processing_seconds=args.processing,
        duration_jitter=args.jitter,
        failure_ratio=args.failure_ratio,
        seed=args.seed,
    )
    try:

        async def main() -> dict[str, Any]:
            async with LumaClient(
                simulator.base_url, simulator.api_key, batch_size=args.batch
            ) as client:
                ids = await _submit_all(client, args.n)
                simulator.ask("reset")
                sim_process = psutil.Process(simulator.pid)
                with RssSampler() as rss:
                    sim_cpu = sum(sim_process.cpu_times()[:2])
                    cpu_before, wall_before = time.process_time(), time.monotonic()
                    if args.phase == "engine":
                        tracked = await _track_engine(client, ids, args.poll, args.batch)
                    else:
                        tracked = await _track_naive(client, ids, args.poll, args.naive_concurrency)
                    cpu = time.process_time() - cpu_before
                    wall = time.monotonic() - wall_before
                    sim_cpu = sum(sim_process.cpu_times()[:2]) - sim_cpu
            completions = simulator.ask("completions")
            counters = simulator.ask("counters")
            detected = tracked["detected"]
            # Generations that completed before the tracking began (submitting 10,000 takes
            # longer than the quickest take to finish) measure the start, not the polling:
            # left out of the delays, counted and printed.
            delays = [
                detected[i] - completions[i]
                for i in ids
                if i in detected and completions[i] >= wall_before
            ]
            early = sum(completions[i] < wall_before for i in ids)
            requests = counters["requests"]
            # What "one GET per generation per poll interval" costs when it keeps its pace.
            to_go = [max(0.0, completions[i] - wall_before) for i in ids]
            ideal_naive = sum(math.floor(seconds / args.poll) + 1 for seconds in to_go)
            return {
                "phase": args.phase,
                "tracked": len(ids),
                "settled": tracked["settled"],
                "detected": len(detected),
                "requests": sum(requests.get(route, 0) for route in _QUERY_ROUTES),
                "requests_by_route": {r: requests[r] for r in _QUERY_ROUTES if r in requests},
                "mean_delay": statistics.fmean(delays) if delays else math.nan,
                "completed_before_tracking": early,
                "max_delay": max(delays) if delays else math.nan,
                "min_delay": min(delays) if delays else math.nan,
                "cpu_seconds": cpu,
                "wall_seconds": wall,
                "peak_rss_mb": rss.peak / 1e6,
                "rss_growth_mb": (rss.peak - base_rss) / 1e6,
                "simulator_cpu_share": sim_cpu / wall if wall else math.nan,
                "mean_interval": tracked.get("mean_interval", math.nan),
                "ideal_naive_requests": ideal_naive,
                "generation_seconds": sum(to_go),
            }

        return asyncio.run(main())
    finally:
        simulator.stop()


# -- the driver -------------------------------------------------------------------------------


def _phase_in_child(args: argparse.Namespace, phase: str, n: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--n", str(n)]
    for name in (
        "poll",
        "batch",
        "pending",
        "processing",
        "jitter",
        "failure_ratio",
        "seed",
        "naive_concurrency",
    ):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the {phase} phase failed (exit {done.returncode})")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _per_generation(row: dict[str, Any]) -> float:
    return float(row["requests"]) / max(int(row["tracked"]), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="generations the engine tracks")
    parser.add_argument("--big-n", type=int, default=10000, help="the engine's large case")
    parser.add_argument("--naive-n", type=int, default=200, help="generations naive tracks")
    parser.add_argument("--naive-concurrency", type=int, default=20, help="naive's semaphore")
    parser.add_argument("--pairs", type=int, default=2, help="paired engine/naive runs")
    parser.add_argument("--poll", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--batch", type=int, default=100, help="ids per batch request")
    parser.add_argument("--pending", type=float, default=8.0, help="relay pending seconds")
    parser.add_argument("--processing", type=float, default=16.0, help="relay processing s")
    parser.add_argument("--jitter", type=float, default=0.5, help="duration spread, +-")
    parser.add_argument("--failure-ratio", type=float, default=0.02, help="share that fails")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--phase", choices=("engine", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:
        print(json.dumps(run_phase(args)))
        return 0

    low = (args.pending + args.processing) * (1 - args.jitter)
    high = (args.pending + args.processing) * (1 + args.jitter)
    print(
        f"Engine tracks {args.n} (and {args.big_n}) generations at once, naive {args.naive_n} "
        f"(semaphore {args.naive_concurrency}); poll interval {args.poll:g} s, batch chunks "
        f"of {args.batch}; {args.pairs} paired runs, alternating which goes first.\n"
        f"Simulator: own process, REAL clock; each generation takes {args.pending:g} s "
        f"pending + {args.processing:g} s processing +-{args.jitter:.0%}, so completes "
        f"{low:g}-{high:g} s after submit; {args.failure_ratio:.0%} fail.\n"
    )
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for index in range(args.pairs):
        order = ("engine", "naive") if index % 2 == 0 else ("naive", "engine")
        done = {
            phase: _phase_in_child(args, phase, args.n if phase == "engine" else args.naive_n)
            for phase in order
        }
        pairs.append((done["engine"], done["naive"]))
    big = _phase_in_child(args, "engine", args.big_n) if args.big_n else None

    header = (
        f"{'approach':<8} {'tracked':>7} {'seen':>6} {'requests':>9} {'req/gen':>8} "
        f"{'mean delay':>11} {'max delay':>10} {'CPU s':>7} {'wall s':>7} {'RSS +':>9} "
        f"{'sim CPU':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = [row for pair in pairs for row in pair] + ([big] if big else [])
    early = {row["tracked"]: row["completed_before_tracking"] for row in rows}
    if any(early.values()):
        print(f"(completed before the tracking began, left out of the delays: {early})")
    for row in rows:
        print(
            f"{row['phase']:<8} {row['tracked']:>7} {row['detected']:>6} {row['requests']:>9} "
            f"{_per_generation(row):>8.2f} {row['mean_delay']:>10.3f}s {row['max_delay']:>9.3f}s "
            f"{row['cpu_seconds']:>7.2f} {row['wall_seconds']:>7.1f} "
            f"{row['rss_growth_mb']:>6.1f} MB {row['simulator_cpu_share']:>7.0%}"
        )

    ratios = sorted(_per_generation(n) / max(_per_generation(e), 1e-9) for e, n in pairs)
    engines = [e for e, _ in pairs]
    naives = [n for _, n in pairs]
    engine_delay = statistics.median(e["mean_delay"] for e in engines)
    intervals = [float(n["mean_interval"]) for n in naives]
    pace = max(intervals)
    sim_share = max(r["simulator_cpu_share"] for r in rows)
    print(
        f"\nrequests per generation, naive / engine, per pair: "
        f"{', '.join(f'{r:.1f}x' for r in ratios)} (median {statistics.median(ratios):.1f}x).\n"
        f"naive's mean interval between two GETs of one generation: "
        f"{', '.join(f'{interval:.3f} s' for interval in intervals)} (nominal {args.poll:g} s)."
    )
    checks = [
        (
            f"naive kept its pace: worst mean interval {pace:.3f} s "
            f"(target <= {PACE_TOLERANCE:.2f} x {args.poll:g} s)",
            pace <= PACE_TOLERANCE * args.poll,
        ),
        (
            f"the simulator is not the bottleneck: at most {sim_share:.0%} of a core "
            f"(target < {SIMULATOR_CPU_LIMIT:.0%})",
            sim_share < SIMULATOR_CPU_LIMIT,
        ),
        (
            f"requests per generation: naive / engine = {ratios[0]:.1f}x in the worst pair "
            f"(target >= {REQUEST_RATIO_TARGET:g}x)",
            ratios[0] >= REQUEST_RATIO_TARGET,
        ),
        (
            f"engine mean detection delay {engine_delay:.3f} s (median of pairs; target <= one "
            f"poll interval, {args.poll:g} s)",
            engine_delay <= args.poll,
        ),
        (
            f"engine peak RSS above its imports {max(e['rss_growth_mb'] for e in engines):.1f} "
            f"MB (target < {RSS_TARGET_MB:g} MB)",
            max(e["rss_growth_mb"] for e in engines) < RSS_TARGET_MB,
        ),
        (
            "every generation seen terminal by the engine",
            all(e["detected"] == e["tracked"] == e["settled"] for e in engines),
        ),
    ]
    if big:
        growth = big["mean_delay"] / engine_delay
        checks += [
            (
                f"engine mean delay at {args.big_n}: {big['mean_delay']:.3f} s, "
                f"{growth:.2f}x the {args.n} case (target <= {DELAY_GROWTH_TARGET:.2f}x)",
                growth <= DELAY_GROWTH_TARGET,
            ),
            (
                f"every one of {args.big_n} seen terminal, RSS +{big['rss_growth_mb']:.0f} MB",
                big["detected"] == big["tracked"] == big["settled"],
            ),
        ]
    print()
    for text, ok in checks:
        print(f"[{'PASS' if ok else 'FAIL'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    raise SystemExit(main())
