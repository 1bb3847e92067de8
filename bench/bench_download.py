"""Download benchmark: 1 GiB over https on loopback, the project's download against anchors.

Starts the relay simulator in a child process (like a CDN on another machine: its Python
does not share our GIL), serving https with a certificate made for the run (trustme). Then,
in the same run, `--rounds` rounds; each round runs every contender once, in an order that
rotates from round to round (alternating pairs, never best-of), and the table shows medians
(and the lowest-highest CPU per GiB over the rounds):

- `luma_prefect` : `download_generation_files` with its media client (httpx's own transport)
- `luma_prefect + httpx-aiohttp` : the same engine over the httpx-aiohttp transport
- `httpx + sha256` : plain httpx streaming into a file, hashed on the way
- `aiohttp + sha256` : aiohttp streaming (1 MiB reads) into a file, hashed on the way
- `curl -o` : curl writing the file, no hash
- `curl | tee | sha256sum` : curl, the file, and a hash of every byte

Python contenders run in a fresh process each and time themselves from the request to the
closed file (wall, and CPU seconds of the process, all threads: `getrusage(RUSAGE_SELF)`),
so interpreter start, imports and building the storage do not count; curl pipelines are
timed from outside (CPU of every process in the pipeline: `RUSAGE_CHILDREN`). The sha256 of
every file timed is checked against the served body. Peak memory growth is the process's
peak RSS above its RSS before the download. Finally the project's download is cut at 50 %
(a DROP_CONNECTION fault) and the bytes served after the cut are counted: the remaining
half when Range resume works.

Targets (exit status 1 if one is missed): the project's CPU per GiB within 1.3x of aiohttp's
(if not, at least no worse than plain httpx's: printed as such); peak RSS growth < 64 MiB;
a resume in 2 requests that re-sends only the remainder.

Example:
    ```
    python bench/bench_download.py --size-mib 1024 --rounds 5
    ```
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MIB = 1024 * 1024
GIB = 1024 * MIB
TARGET_CPU_VS_AIOHTTP = 1.3
TARGET_RSS_MIB = 64.0
RESUME_SLACK = MIB

_SIMULATOR = """
import sys
from luma_prefect.simulator import SimulatorTLS, run_simulator
tls = SimulatorTLS(certfile=sys.argv[2], ca_file=sys.argv[3])
with run_simulator(manual_clock=True, video_bytes=int(sys.argv[1]), tls=tls) as sim:
    print(sim.base_url, sim.api_key, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


@dataclass
class Relay:
    """The simulator as the benchmark sees it: address, key, CA, and admin calls over https."""

    base_url: str
    api_key: str
    ca_file: str

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/_simulator{path}"
        response = httpx.request(method, url, json=body, verify=self.ca_file)
        response.raise_for_status()
        return response.json()

    def seed(self) -> str:
        return str(
            self.admin("POST", "/generations", {"prompt": "bench", "state": "completed"})["id"]
        )

    def video_url(self, generation_id: str) -> str:
        found = next(g for g in self.admin("GET", "/generations") if g["id"] == generation_id)
        return str(found["video_raw"]["url"])


@contextmanager
def simulator(size: int, folder: Path) -> Iterator[Relay]:
    import trustme

    ca = trustme.CA()
    certfile, ca_file = folder / "server.pem", folder / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(ca_file))
    child = subprocess.Popen(
        [sys.executable, "-c", _SIMULATOR, str(size), str(certfile), str(ca_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        base_url, api_key = child.stdout.readline().split()
        yield Relay(base_url, api_key, str(ca_file))
    finally:
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait(timeout=15)


# -- the Python contenders, each run in a child process (`--client NAME`) -------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    # VmHWM: this process's own peak. ru_maxrss would also count the parent's RSS at the
    # fork that started it (Linux folds the pre-exec peak into it).
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


async def _ours(args: argparse.Namespace, aiohttp_transport: bool) -> Path:
    from luma_prefect import LumaClient
    from luma_prefect._tls import ssl_context
    from luma_prefect.delivery._download import download_generation_files
    from luma_prefect.delivery._transfer import media_client
    from luma_prefect.storage import storage_for

    transport = None
    if aiohttp_transport:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(verify=ssl_context(args.ca))
    async with (
        LumaClient(args.base_url, args.key, verify=args.ca) as client,
        media_client(verify=args.ca, allow_private_hosts=True, transport=transport) as http,
    ):
        generation = await client.get_generation(args.generation)
        storage = storage_for(args.out)  # imports prefect.filesystems: ~1 CPU s, once
        _start()
        done = await download_generation_files(
            client, generation, storage, assets=("video",), http=http
        )
    return Path(done.assets["video"].path)


async def _httpx(args: argparse.Namespace) -> Path:
    import ssl

    target = Path(args.out) / "httpx.mp4"
    context = ssl.create_default_context(cafile=args.ca)
    async with httpx.AsyncClient(verify=context) as http:
        _start()
        digest = hashlib.sha256()
        with target.open("wb") as file:
            async with http.stream("GET", args.url) as response:
                async for piece in response.aiter_raw():
                    digest.update(piece)
                    file.write(piece)
    return target


async def _aiohttp(args: argparse.Namespace) -> Path:
    import ssl

    import aiohttp

    target = Path(args.out) / "aiohttp.mp4"
    context = ssl.create_default_context(cafile=args.ca)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        _start()
        digest = hashlib.sha256()
        with target.open("wb") as file:
            async with session.get(args.url) as response:
                async for piece in response.content.iter_chunked(MIB):
                    digest.update(piece)
                    file.write(piece)
    return target


_MARK: dict[str, float] = {}


def _start() -> None:
    _MARK.update(wall=time.perf_counter(), cpu=_cpu(), rss=_rss())


def run_client(args: argparse.Namespace) -> None:
    runners: dict[str, Callable[[], Any]] = {
        "ours": lambda: _ours(args, aiohttp_transport=False),
        "ours-aiohttp": lambda: _ours(args, aiohttp_transport=True),
        "httpx": lambda: _httpx(args),
        "aiohttp": lambda: _aiohttp(args),
    }
    path = asyncio.run(runners[args.client]())
    wall, cpu = time.perf_counter() - _MARK["wall"], _cpu() - _MARK["cpu"]
    growth = _peak_rss() - _MARK["rss"]
    print(json.dumps({"path": str(path), "wall": wall, "cpu": cpu, "rss": growth}))


# -- the parent: rounds, checks, table -------------------------------------------------------


@dataclass
class Contender:
    name: str
    run: Callable[[Path], tuple[float, float, float | None, Path]]
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)


def python_contender(client: str, relay: Relay, generation_id: str, url: str) -> Callable[..., Any]:
    def run(folder: Path) -> tuple[float, float, float | None, Path]:
        command = [sys.executable, __file__, "--client", client, "--out", str(folder)]
        command += ["--base-url", relay.base_url, "--key", relay.api_key, "--ca", relay.ca_file]
        command += ["--generation", generation_id, "--url", url]
        result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
        return result["wall"], result["cpu"], result["rss"], Path(result["path"])

    return run


def shell_contender(command: str, target: str) -> Callable[..., Any]:
    def run(folder: Path) -> tuple[float, float, float | None, Path]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(["sh", "-c", command.format(out=folder / target)], check=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu, None, folder / target

    return run


def expected_sha256(size: int) -> str:
    from luma_prefect.simulator._media import synthetic_bytes

    digest = hashlib.sha256()
    for start in range(0, size, 64 * MIB):
        digest.update(synthetic_bytes(start, min(64 * MIB, size - start)))
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def run_interrupted(relay: Relay, size: int, folder: Path) -> tuple[int, int, int]:
    generation_id = relay.seed()
    cut = size // 2
    fault = {"kind": "drop_connection", "routes": ["media"], "after_bytes": cut, "times": 1}
    relay.admin("POST", "/faults", fault)
    relay.admin("POST", "/reset-counters")
    url = relay.video_url(generation_id)
    python_contender("ours", relay, generation_id, url)(folder)
    counters = relay.admin("GET", "/counters")
    requests = int(counters["media_requests_by_generation"].get(generation_id, 0))
    return int(counters["bytes_served"]) - cut, size - cut, requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="video size (MiB)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every contender")
    parser.add_argument("--dir", default=None, help="folder for the files (default: temp)")
    parser.add_argument("--only", default=None, help="comma-separated contender names")
    for name in ("client", "out", "base-url", "key", "ca", "generation", "url"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        run_client(args)
        return 0
    if shutil.which("curl") is None:
        print("curl is not installed: nothing to compare with.", file=sys.stderr)
        return 2
    size = args.size_mib * MIB
    folder = Path(tempfile.mkdtemp(prefix="luma-bench-", dir=args.dir))
    expected = expected_sha256(size)
    try:
        with simulator(size, folder) as relay:
            generation_id = relay.seed()
            url = relay.video_url(generation_id)
            curl = f"curl -sS --fail --cacert {relay.ca_file} {url!r}"
            contenders = [
                Contender("luma_prefect", python_contender("ours", relay, generation_id, url)),
                Contender(
                    "luma_prefect + httpx-aiohttp",
                    python_contender("ours-aiohttp", relay, generation_id, url),
                ),
                Contender("httpx + sha256", python_contender("httpx", relay, generation_id, url)),
                Contender(
                    "aiohttp + sha256", python_contender("aiohttp", relay, generation_id, url)
                ),
                Contender("curl -o", shell_contender(curl + " -o {out}", "curl.mp4")),
                Contender(
                    "curl | tee | sha256sum",
                    shell_contender(curl + " | tee {out} | sha256sum >/dev/null", "tee.mp4"),
                ),
            ]
            if args.only:
                keep = {*args.only.split(","), "luma_prefect", "httpx + sha256"}
                keep.update({"aiohttp + sha256", "curl -o"})  # what the ratios divide by
                contenders = [c for c in contenders if c.name in keep]
            for round_number in range(args.rounds):
                shift = round_number % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    os.sync()  # each run starts without the previous one's writeback
                    run_folder = Path(tempfile.mkdtemp(dir=folder))
                    wall, cpu, rss, path = contender.run(run_folder)
                    got = file_sha256(path)
                    if got != expected:
                        raise SystemExit(f"{contender.name}: sha256 {got} != {expected}")
                    contender.walls.append(wall)
                    contender.cpus.append(cpu)
                    if rss is not None:
                        contender.rss.append(rss / MIB)
                    shutil.rmtree(run_folder)
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
            after, remaining, requests = run_interrupted(relay, size, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report(args, size, contenders, after, remaining, requests)


def report(
    args: argparse.Namespace,
    size: int,
    contenders: list[Contender],
    after: int,
    remaining: int,
    requests: int,
) -> int:
    by_name = {c.name: c for c in contenders}

    def cpu_per_gib(c: Contender) -> float:
        return statistics.median(c.cpus) * GIB / size

    curl_wall = statistics.median(by_name["curl -o"].walls)
    aiohttp_cpu = cpu_per_gib(by_name["aiohttp + sha256"])
    print(f"\n{args.size_mib} MiB over https on 127.0.0.1 (simulator in a child process);")
    print(f"{args.rounds} rounds, contenders alternated; medians; every file's sha256 checked.\n")
    header = (
        "contender",
        "wall s",
        "MB/s",
        "x curl",
        "CPU s/GiB",
        "rounds",
        "x aiohttp",
        "peak RSS +",
    )
    widths = (30, 7, 6, 6, 9, 11, 9, 10)

    def row(*cells: str) -> None:
        print("| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |")

    row(*header)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in contenders:
        wall = statistics.median(c.walls)
        rss = f"{max(c.rss):.1f} MiB" if c.rss else "-"
        row(
            c.name,
            f"{wall:.2f}",
            f"{size / wall / 1e6:.0f}",
            f"{curl_wall / wall:.2f}",
            f"{cpu_per_gib(c):.2f}",
            f"{min(c.cpus) * GIB / size:.2f}-{max(c.cpus) * GIB / size:.2f}",
            f"{cpu_per_gib(c) / aiohttp_cpu:.2f}",
            rss,
        )
    ours = by_name["luma_prefect"]
    ours_cpu, httpx_cpu = cpu_per_gib(ours), cpu_per_gib(by_name["httpx + sha256"])
    near_aiohttp = ours_cpu <= TARGET_CPU_VS_AIOHTTP * aiohttp_cpu
    checks = {
        "cpu": near_aiohttp or ours_cpu <= httpx_cpu,
        "memory": max(ours.rss) < TARGET_RSS_MIB,
        # The resume asks for what the file lacks (Range from the part's size).
        "resume": abs(after - remaining) <= RESUME_SLACK and requests == 2,
    }
    print()
    print(
        f"CPU per GiB, luma_prefect: {ours_cpu:.2f} s = {ours_cpu / aiohttp_cpu:.2f}x aiohttp's "
        f"(target <= {TARGET_CPU_VS_AIOHTTP}x: {'met' if near_aiohttp else 'missed'}); "
        f"{ours_cpu / httpx_cpu:.2f}x plain httpx's (fallback target <= 1.00x: "
        f"{'met' if ours_cpu <= httpx_cpu else 'MISSED'})"
    )
    print(f"peak RSS growth, luma_prefect: {max(ours.rss):.1f} MiB (target < 64 MiB)")
    print(
        f"cut at 50 %: {requests} requests, {after:,} bytes sent after the cut for "
        f"{remaining:,} remaining ({'ok' if checks['resume'] else 'MISSED'})"
    )
    raw = {c.name: {"wall": c.walls, "cpu": c.cpus, "rss_mib": c.rss} for c in contenders}
    print(json.dumps(raw))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
