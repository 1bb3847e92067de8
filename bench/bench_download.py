"""Download benchmark: the luma_prefect engine against curl, on a local relay simulator.

Starts the relay simulator on 127.0.0.1, seeds a completed generation whose video is a
synthetic file of `--size-mib` MiB, then downloads that same video link with
`curl -s -o <file> URL` and with `download_generation_files`, alternately, `--repeat`
times each (best run of each is compared). Samples this process's RSS in a thread during
our downloads. Finally breaks one download off at 50 % (a DROP_CONNECTION fault) and counts
the bytes the server sent after the break: about the remaining half when Range resume works.

The simulator runs in a child process by default, like a real CDN on another machine:
in this process its Python would share our GIL and slow both sides (`--in-process` to
compare). Files go to a temporary folder (`--dir`), deleted after each run.

Targets (exit status 1 if one is missed): throughput >= 80 % of curl's, peak RSS growth
< 64 MiB, bytes after the interruption within 1 MiB of the remaining half.

Example:
    ```
    python bench/bench_download.py --size-mib 1024
    ```
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from luma_prefect import LumaClient
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.storage import storage_for

MIB = 1024 * 1024
TARGET_SHARE = 0.80
TARGET_RSS_MIB = 64.0
RESUME_SLACK = MIB

_CHILD = """
import sys
from luma_prefect.simulator import run_simulator
with run_simulator(manual_clock=True, video_bytes=int(sys.argv[1])) as sim:
    print(sim.base_url, sim.api_key, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


@dataclass
class Relay:
    """The simulator as the benchmark sees it: address, key, and admin calls over HTTP."""

    base_url: str
    api_key: str

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.base_url}/_simulator{path}", json=body)
        response.raise_for_status()
        return response.json()

    def seed(self) -> str:
        return str(
            self.admin("POST", "/generations", {"prompt": "bench", "state": "completed"})["id"]
        )

    def video_url(self, generation_id: str) -> str:
        generation = self.admin("GET", "/generations")
        found = next(g for g in generation if g["id"] == generation_id)
        return str(found["video_raw"]["url"])


@contextmanager
def simulator(size: int, in_process: bool) -> Iterator[Relay]:
    if in_process:
        from luma_prefect.simulator import run_simulator

        with run_simulator(manual_clock=True, video_bytes=size) as sim:
            yield Relay(sim.base_url, sim.api_key)
        return
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        base_url, api_key = child.stdout.readline().split()
        yield Relay(base_url, api_key)
    finally:
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait(timeout=15)


class RssSampler:
    """Peak RSS of this process, sampled every 5 ms in a thread, above a baseline."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / MIB


def run_curl(url: str, folder: Path) -> float:
    target = folder / "curl.mp4"
    started = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", str(target), url], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


async def run_ours(relay: Relay, generation_id: str, folder: Path) -> tuple[float, int]:
    async with LumaClient(relay.base_url, relay.api_key) as client:
        generation = await client.get_generation(generation_id)
        started = time.perf_counter()
        done = await download_generation_files(
            client, generation, storage_for(folder), assets=("video",)
        )
        elapsed = time.perf_counter() - started
    shutil.rmtree(folder / generation_id)
    return elapsed, done.assets["video"].bytes


async def run_interrupted(relay: Relay, size: int, folder: Path) -> tuple[int, int, int]:
    generation_id = relay.seed()
    cut = size // 2
    fault = {"kind": "drop_connection", "routes": ["media"], "after_bytes": cut, "times": 1}
    relay.admin("POST", "/faults", fault)
    relay.admin("POST", "/reset-counters")
    await run_ours(relay, generation_id, folder)
    counters = relay.admin("GET", "/counters")
    requests = int(counters["media_requests_by_generation"].get(generation_id, 0))
    return int(counters["bytes_served"]) - cut, size - cut, requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="video size (MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each (best counts)")
    parser.add_argument("--dir", default=None, help="folder for the files (default: temp)")
    parser.add_argument("--in-process", action="store_true", help="simulator in this process")
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is not installed: nothing to compare with.", file=sys.stderr)
        return 2
    size = args.size_mib * MIB
    folder = Path(tempfile.mkdtemp(prefix="luma-bench-", dir=args.dir))
    curl_times: list[float] = []
    our_times: list[float] = []
    rss_growth = 0.0
    try:
        with simulator(size, args.in_process) as relay:
            generation_id = relay.seed()
            url = relay.video_url(generation_id)
            for _ in range(args.repeat):
                os.sync()  # each run starts without the previous one's writeback
                curl_times.append(run_curl(url, folder))
                os.sync()
                with RssSampler() as rss:
                    elapsed, written = asyncio.run(run_ours(relay, generation_id, folder))
                assert written == size, f"downloaded {written} bytes, expected {size}"
                our_times.append(elapsed)
                rss_growth = max(rss_growth, rss.growth_mib)
            after, remaining, requests = asyncio.run(run_interrupted(relay, size, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    share = min(curl_times) / min(our_times)
    checks = {
        "throughput": share >= TARGET_SHARE,
        "memory": rss_growth < TARGET_RSS_MIB,
        "resume": abs(after - remaining) <= RESUME_SLACK and requests == 2,
    }
    where = "in this process" if args.in_process else "in a child process"
    print(f"\nDownload of a {args.size_mib} MiB synthetic video from the relay simulator")
    print(f"(127.0.0.1, {where}); best of {args.repeat} runs each; 1 MB = 10^6 bytes.\n")
    widths = (40, 38, 14, 6)

    def row(*cells: str) -> None:
        print("| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |")

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    row("measure", "result", "target", "")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, runs in (("curl -s -o", curl_times), ("luma_prefect engine", our_times)):
        shown = ", ".join(f"{t:.2f}" for t in runs)
        row(f"{name}: seconds, best (all)", f"{min(runs):.2f} ({shown})", "", "")
        row(f"{name}: MB/s, best", f"{size / min(runs) / 1e6:.0f}", "", "")
    row("our throughput, % of curl's", f"{share:.0%}", ">= 80 %", verdict(checks["throughput"]))
    row(
        "peak RSS growth, our download",
        f"{rss_growth:.1f} MiB",
        "< 64 MiB",
        verdict(checks["memory"]),
    )
    row("interrupted at 50 %: requests", f"{requests}", "2", verdict(requests == 2))
    row(
        "bytes sent after the interruption",
        f"{after:,}",
        f"{remaining:,}",
        verdict(checks["resume"]),
    )
    print()
    print(json.dumps({"curl_s": curl_times, "ours_s": our_times, "share": round(share, 3)}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
