"""Deliveries benchmark: many small generations over https, media clients handed on or not.

    python bench/bench_deliveries.py [--generations 150] [--rounds 4] [--at-once 10]

The batch flows deliver inside `shared_clients`, where a delivery borrows a media client
from the block and gives it back with its connections open (`media_client_for`); outside
it, each delivery builds a client and closes it, one new connection (and TLS handshake)
per file. This compares the two on the same work: `--generations` completed generations
(video, thumbnail, last frame each; 512 KiB videos), delivered `--at-once` at a time into
a local folder, from the relay simulator serving https in a child process (certificate
made for the run, trustme). Each round runs both, in an order that alternates from round
to round, each in a fresh process timed from the first delivery to the last (CPU of the
process, all threads, and wall); the table shows medians. New connections are the media
requests the simulator saw on a connection no earlier request had used. Every video's
sha256 is checked against the served body, every other file against the digest its
delivery recorded.

Measured here (2 cores shared, 150 generations, 10 at once, 4 rounds; handed on used less
CPU in each of the 8 pairs of the two runs):

                      CPU per delivery   wall    new connections
    load average ~2
      client per delivery      24.8 ms    3.36 s    450
      handed on                20.1 ms    2.67 s     30
    load average ~1.5
      client per delivery      18.1 ms    2.57 s    450
      handed on                16.9 ms    2.37 s     30

Over plain http, in `bench_orchestration.py` (500 generations), the difference was lost in
the run-to-run noise: 49 and 51 ms of CPU per generation handed on, 43 and 53 without (same run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_download import expected_sha256, file_sha256, simulator

VIDEO_BYTES = 512 * 1024
MODES = ("client per delivery", "handed on")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _deliver(args: argparse.Namespace) -> dict[str, Any]:
    from luma_prefect import LumaClient, LumaRelayCredentials
    from luma_prefect.delivery._download import download_generation_files
    from luma_prefect.storage import storage_for
    from luma_prefect.tasks._common import media_client_for, shared_clients

    block = LumaRelayCredentials(
        base_url=args.base_url, api_key=args.key, verify=args.ca, allow_private_media_hosts=True
    )
    storage = storage_for(args.out)
    async with LumaClient(args.base_url, args.key, verify=args.ca) as client:
        generations = [await client.get_generation(i) for i in json.loads(args.ids)]
        gate = asyncio.Semaphore(args.at_once)

        async def one(generation: Any) -> Any:
            async with gate, media_client_for(block, 3) as http:
                return await download_generation_files(client, generation, storage, http=http)

        handed_on = args.mode == MODES[1]
        cpu, wall = _cpu(), time.perf_counter()
        async with shared_clients() if handed_on else contextlib.nullcontext():
            done = await asyncio.gather(*(one(g) for g in generations))
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    files = [asset for delivered in done for asset in delivered.assets.values()]
    return {
        "cpu": cpu,
        "wall": wall,
        "files": [[a.name, a.path, a.sha256] for a in files],
    }


def _verify(files: list[list[str]]) -> int:
    video = expected_sha256(VIDEO_BYTES)
    for name, path, recorded in files:
        want = video if name == "video" else recorded
        if file_sha256(Path(path)) != want:
            raise SystemExit(f"sha256 mismatch: {path}")
    return len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--at-once", type=int, default=10, help="deliveries at once")
    for name in ("mode", "base-url", "key", "ca", "ids", "out"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(asyncio.run(_deliver(args))))
        return 0
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp, simulator(VIDEO_BYTES, Path(tmp)) as relay:
        for round_ in range(args.rounds):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                ids = [relay.seed() for _ in range(args.generations)]
                relay.admin("POST", "/reset-counters")
                out = tempfile.mkdtemp(dir=tmp)
                command = [sys.executable, __file__, "--mode", mode, "--base-url"]
                command += [relay.base_url, "--key", relay.api_key, "--ca", relay.ca_file]
                command += ["--ids", json.dumps(ids), "--out", out]
                command += ["--at-once", str(args.at_once)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(done.stderr[-3000:])
                row = json.loads(done.stdout.strip().splitlines()[-1])
                counters = relay.admin("GET", "/counters")
                media = counters["requests"].get("media", 0)
                row["new"] = media - counters["reused_connections"].get("media", 0)
                row["verified"] = _verify(row.pop("files"))
                rows[mode].append(row)
                print(
                    f"round {round_ + 1} {mode:20s} CPU {row['cpu']:.2f} s, wall "
                    f"{row['wall']:.2f} s, {row['new']} new connections for {media} media "
                    f"requests, {row['verified']} files sha256-verified",
                    flush=True,
                )
    print(f"\n{args.generations} generations, {args.at_once} at once, https, medians:")
    for mode, found in rows.items():
        cpu = statistics.median(r["cpu"] for r in found) / args.generations * 1000
        wall = statistics.median(r["wall"] for r in found)
        new = statistics.median(r["new"] for r in found)
        print(
            f"  {mode:20s} {cpu:5.1f} ms CPU per delivery, {wall:5.2f} s wall, "
            f"{new:4.0f} new connections"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
