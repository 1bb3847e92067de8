"""End-to-end helpers: a real Prefect server, the relay simulator and `deployments/serve.py`.

Each runs in a process group of its own (`start_new_session=True`), with its own
PREFECT_HOME and database, telemetry off, loopback only. They start once per session, only
when an e2e test asks for them, and stop at the end of the session, also when a test
failed; the teardown then checks with psutil that no process of theirs is left behind.

The simulator keeps generations `processing` for an hour: a test decides when they finish
(`Stack.advance`), so a flow run can be caught mid-wait without timing races.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_SCRIPT = REPO_ROOT / "deployments" / "serve.py"
CREDENTIALS_BLOCK = "luma-relay"
SIM_KEY = "sk-e2e-local"
#: Simulated seconds a generation stays processing: tests end waits with `Stack.advance`.
SIM_PROCESSING_SECONDS = 3600.0
#: Poll fast in the flow runs the tests start themselves (the deployments keep 5 s).
FAST_POLLS: dict[str, float] = {"poll_interval_seconds": 0.5, "max_poll_interval_seconds": 1.0}
#: Generous bounds for a loaded 2-core machine; they only cost time when something hangs.
STARTUP_TIMEOUT = 180.0
RUN_TIMEOUT = 180.0
STOP_GRACE = 20.0
_MARKER = "LUMA_E2E_SESSION"

T = TypeVar("T")


def command(name: str) -> str | None:
    """A console script of this virtualenv first, else of the PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _free_port() -> int:
    """A free port for a server started with a fixed `--port`, chosen below the kernel's
    ephemeral range: a port the kernel handed out for `bind(0)` went back to its pool when
    the probe closed, and the simulator started beside the server (`--port 0`) once got
    that very port before the server bound it."""
    floor = _ephemeral_floor()
    for _ in range(200):
        port = random.randrange(max(floor - 12_000, 1024), floor)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = RUN_TIMEOUT,
    interval: float = 0.25,
    details: Callable[[], str] = lambda: "",
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")
        await asyncio.sleep(interval)


@dataclass
class Child:
    """One process this session started, the leader of its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"--- {self.name} (pid {self.pid}, exit {self.popen.poll()}) {self.log} ---\n" + (
            "\n".join(text)
        )


@dataclass
class Processes:
    """Starts children in their own sessions, tagged by an env marker, and stops them all."""

    logs: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        cwd: Path = REPO_ROOT,
        stdin: int = subprocess.DEVNULL,
    ) -> Child:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(args),
                cwd=cwd,
                env={**env, _MARKER: self.marker},
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def run(
        self, name: str, args: Sequence[str], env: dict[str, str], timeout: float = 120.0
    ) -> str:
        """Run a command to its end (in its own group too); its output, or a failed test."""
        child = self.start(name, args, env)
        try:
            code = child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(child, grace=0)
            message = f"{name} did not finish in {timeout:.0f} s\n{child.tail()}"
            raise AssertionError(message) from None
        assert code == 0, f"{name} failed with exit code {code}\n{child.tail()}"
        return child.log.read_text(errors="replace")

    def ours(self) -> list[psutil.Process]:
        """Every live process carrying this session's marker (children of children too)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get(_MARKER) == self.marker:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def group(self, child: Child) -> list[psutil.Process]:
        """The live processes of a child's group that are ours (the group may outlive it)."""
        members = []
        for proc in self.ours():
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                if os.getpgid(proc.pid) == child.pid:
                    members.append(proc)
        return members

    def kill(self, child: Child) -> None:
        """SIGKILL a child's whole group at once: what an OOM kill or a power cut looks like."""
        if child.popen.poll() is None:  # not reaped yet: its pgid is still its group's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.popen.wait(30)
        for proc in self.group(child):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()

    def stop(self, child: Child, grace: float = STOP_GRACE) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds, and whatever outlived it.

        Once the leader is reaped its pgid may name someone else's group, so from then on
        only processes carrying our marker are killed.
        """
        if child.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(grace)
        self.kill(child)

    def stop_all(self) -> None:
        """Stop every child, newest first (serve before the server it talks to)."""
        errors = []
        for child in reversed(self.children):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


@dataclass
class Stack:
    """The running server, simulator and serve process, and how tests drive them."""

    tmp: Path
    api_url: str
    sim_url: str
    destination: Path
    env: dict[str, str]
    processes: Processes
    server: Child
    simulator: Child
    serve: Child
    serve_started: float
    database_url: str | None = None
    """The server's PostgreSQL database as Prefect takes it, or None when it is SQLite."""

    # -- Prefect API --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        """A Prefect client on this stack's server (whatever this test process had set)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            async with get_client() as client:
                yield client

    async def run_deployment(self, name: str, **parameters: Any) -> uuid.UUID:
        """Start a flow run of a deployment as the UI's Custom run does; its id."""
        async with self.client() as client:
            deployment = await client.read_deployment_by_name(name)
            run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        return run.id

    async def read_run(self, flow_run_id: uuid.UUID | str) -> Any:
        async with self.client() as client:
            return await client.read_flow_run(uuid.UUID(str(flow_run_id)))

    async def wait_for_state(
        self, flow_run_id: uuid.UUID | str, types: set[str], timeout: float = RUN_TIMEOUT
    ) -> Any:
        """The flow run once its state type is one of `types` (bounded)."""

        async def probe() -> Any:
            run = await self.read_run(flow_run_id)
            return run if run.state and run.state.type.value in types else None

        return await eventually(
            probe, f"flow run {flow_run_id} to reach {sorted(types)}", timeout, 0.5, self.report
        )

    async def wait_for_final(self, flow_run_id: uuid.UUID | str) -> Any:
        return await self.wait_for_state(
            flow_run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        )

    # -- simulator admin ----------------------------------------------------------------

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.sim_url}/_simulator{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def counters(self) -> dict[str, Any]:
        return dict(self.sim("GET", "/counters"))

    def add_fault(self, **fault: Any) -> str:
        return str(self.sim("POST", "/faults", fault)["id"])

    def remove_fault(self, fault_id: str) -> None:
        self.sim("DELETE", f"/faults/{fault_id}")

    def advance(self, seconds: float = SIM_PROCESSING_SECONDS) -> None:
        """Move the simulator's clock: every generation submitted so far completes."""
        self.sim("POST", "/advance", {"seconds": seconds})

    # -- ledger and processes -----------------------------------------------------------

    def ledger_records(self, destination: Path) -> list[dict[str, Any]]:
        folder = destination / ".luma-ledger" / "generations"
        records = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(path.read_text()))
        return records

    def record(self, destination: Path, generation_id: str) -> dict[str, Any]:
        """The ledger record of one generation (there must be exactly one)."""
        records = self.ledger_records(destination)
        (record,) = [r for r in records if r["generation_id"] == generation_id]
        return record

    async def submitted(self, destination: Path, prompt: str) -> dict[str, Any]:
        """The ledger record of the generation submitted for `prompt`, once it is written."""

        def probe() -> dict[str, Any] | None:
            for record in self.ledger_records(destination):
                if (record.get("request") or {}).get("prompt") == prompt:
                    return record
            return None

        return await eventually(probe, f"a ledger record for {prompt!r}", details=self.report)

    def flow_run_process(self, flow_run_id: uuid.UUID | str) -> psutil.Process:
        """The serve child running a flow run: `python -m prefect.engine` with the run's id
        in PREFECT__FLOW_RUN_ID (or, runs started from the flow object, a multiprocessing
        spawn; then it must be the only one)."""
        engines, spawns = [], []
        for proc in psutil.Process(self.serve.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                line = " ".join(proc.cmdline())
                if proc.environ().get("PREFECT__FLOW_RUN_ID") == str(flow_run_id):
                    engines.append(proc)
                elif "spawn_main" in line and "resource_tracker" not in line:
                    spawns.append(proc)
        found = engines or spawns
        assert len(found) == 1, f"flow run processes of {flow_run_id}: {found}\n{self.report()}"
        return found[0]

    def python(self, name: str, code: str) -> Child:
        """A Python process of our own on this stack's server (not run by `serve`)."""
        return self.processes.start(name, [sys.executable, "-c", code], self.env)

    def report(self) -> str:
        """The tail of every child's log, for failure messages."""
        return "\n".join(child.tail() for child in self.processes.children)


def _child_env(home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: ours (or `environ`, a copy taken by a thread that
    must not iterate `os.environ` while pytest changes it), minus any Prefect or relay
    setting inherited."""
    environ = os.environ if environ is None else environ
    env = {
        key: value
        for key, value in environ.items()
        if not key.startswith(("PREFECT_", "LUMA_RELAY_", "LUMA_PREFECT_"))
    }
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    # The session's one-certificate CA for Prefect's clients (see tests/conftest.py): this
    # API is http on loopback too, and the chaos runs alone make hundreds of clients.
    if "PREFECT_API_SSL_CERT_FILE" in environ:
        env["PREFECT_API_SSL_CERT_FILE"] = environ["PREFECT_API_SSL_CERT_FILE"]
    return env


async def _wait_for_health(api_url: str, server: Child, report: Callable[[], str]) -> None:
    async def healthy() -> bool:
        assert server.popen.poll() is None, f"the Prefect server exited\n{report()}"
        try:
            # trust_env=False: loopback needs no proxy, and reading one iterates os.environ.
            async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
                response = await http.get(f"{api_url}/health")
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(healthy, f"{api_url}/health", STARTUP_TIMEOUT, 0.5, report)


def _simulator_url(simulator: Child) -> str | None:
    assert simulator.popen.poll() is None, f"the simulator exited\n{simulator.tail()}"
    found = re.search(r"LUMA_RELAY_BASE_URL=(\S+)", simulator.log.read_text(errors="replace"))
    return found.group(1) if found else None


async def start_stack(
    processes: Processes, tmp: Path, ui: bool = False, database_url: str | None = None
) -> Stack:
    """Server, simulator, blocks and serve.py; `ui` serves Prefect's UI too (ui-check).

    The server keeps its data in `database_url` (a PostgreSQL database), else in SQLite.
    """
    prefect_cli = command("prefect")
    assert prefect_cli is not None
    home = tmp / "prefect-home"
    home.mkdir()
    env = _child_env(home)
    server_env = dict(env)
    if database_url is not None:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    if ui:
        server_env.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=api_url)
    server = processes.start(
        "prefect-server",
        [prefect_cli, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        server_env,
    )
    luma_cli = command("luma-prefect")
    simulate = [luma_cli] if luma_cli else [sys.executable, "-m", "luma_prefect.cli"]
    simulator = processes.start(
        "simulator",
        [
            *simulate,
            "simulate",
            "--port",
            "0",
            "--key",
            SIM_KEY,
            "--pending-seconds",
            "0.2",
            "--processing-seconds",
            str(SIM_PROCESSING_SECONDS),
        ],
        env,
    )

    def report() -> str:
        return "\n".join(child.tail() for child in processes.children)

    await _wait_for_health(api_url, server, report)
    env["PREFECT_API_URL"] = api_url
    sim_url = await eventually(lambda: _simulator_url(simulator), "the simulator's URL", 60.0)

    # The README's steps 2 and 3, word for word (with the simulator's URL and key).
    processes.run("block-register", [prefect_cli, "block", "register", "-m", "luma_prefect"], env)
    processes.run(
        "save-credentials",
        [*simulate, "save-credentials", CREDENTIALS_BLOCK],
        {
            **env,
            "LUMA_RELAY_BASE_URL": sim_url,
            "LUMA_RELAY_API_KEY": SIM_KEY,
            "LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS": "1",  # the simulator's media: 127.0.0.1
        },
    )
    destination = tmp / "out"
    serve = processes.start(
        "serve",
        [
            sys.executable,
            str(SERVE_SCRIPT.relative_to(REPO_ROOT)),
            "--credentials",
            CREDENTIALS_BLOCK,
            "--destination",
            str(destination),
        ],
        # Pick up new flow runs within a second instead of the default ten.
        {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
    )
    stack = Stack(
        tmp=tmp,
        api_url=api_url,
        sim_url=sim_url,
        destination=destination,
        env=env,
        processes=processes,
        server=server,
        simulator=simulator,
        serve=serve,
        serve_started=time.monotonic(),
        database_url=database_url,
    )

    async def served() -> bool:
        assert serve.popen.poll() is None, f"serve.py exited\n{report()}"
        async with stack.client() as client:
            deployments = await client.read_deployments()
        return len(deployments) >= 4 and "polling for scheduled runs" in serve.log.read_text(
            errors="replace"
        )

    await eventually(served, "serve.py to register its deployments", STARTUP_TIMEOUT, 0.5, report)
    return stack
