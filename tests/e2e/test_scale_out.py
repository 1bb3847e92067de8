"""Scale-out on the real stack: a Prefect server on PostgreSQL, a process work pool with
three workers in separate processes (none in the checkout), the destination on S3, the
relay simulator at fast timings, 30 generate-video runs (LUMA_SCALE_RUNS), one worker
SIGKILLed midway.

The deployments come from `prefect deploy` of deployments/prefect.yaml in this clone; the
workers run in empty folders of their own, so the flows resolve in the installed package.
The killed worker's runs stop sending heartbeats; the automation installed by
`luma-prefect install-automations` marks them Crashed (and the runs it had claimed but not
started, which stay Pending, by the second automation), and the next collect-pending sweep
(started here every SWEEP_INTERVAL seconds, as a schedule would) publishes their
generations.

Asserted: every paid generation published exactly once with matching sha256, no duplicate
submit, the relay's concurrency limit never exceeded, and the killed worker's generations
published within the liveness window plus one sweep interval (plus that sweep's own run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from luma_prefect.ledger._records import Ledger
from luma_prefect.storage import storage_for
from luma_prefect.tasks._throttle import relay_limit_name

from ._postgres import PostgresStack
from ._stack import REPO_ROOT, Processes, _simulator_url, command, eventually

# A step of its own, `make test-scale`, kept out of `make test`: about 5.5 minutes on this
# 2-core machine with a load average of 10-15 from other jobs.
pytestmark = pytest.mark.scale

#: Each flow run is a Python process of its own (about 2.4 CPU seconds of imports alone),
#: so on 2 cores 30 runs keep the test within minutes; LUMA_SCALE_RUNS=100 for the full size.
RUNS = int(os.environ.get("LUMA_SCALE_RUNS", "30"))
WORKERS = 3
#: Flow runs at once per worker: three workers share two cores with everything else.
WORKER_LIMIT = 8
#: Prefect's minimum heartbeat frequency, and the automation's window (1.5 heartbeats).
HEARTBEAT_SECONDS = 30
WITHIN_SECONDS = 45
#: Prefect's proactive triggers are evaluated every few seconds: the window's slack.
TRIGGER_SLACK = 15
SWEEP_INTERVAL = 10
#: Runs claimed by the killed worker that never started are Crashed after this long Pending
#: (long enough that a live worker's run, slow to start on a loaded machine, is not).
PENDING_WITHIN_SECONDS = 60
RELAY_LIMIT = 4
#: Generations take this long at the relay, and each poll 0.3 s, so that many runs wait
#: and poll at once (a loaded 2-core machine otherwise runs them one after the other).
PROCESSING_SECONDS = 8
POLL_SECONDS = 0.3
SIM_KEY = "sk-scale-local"
FAST = {"poll_interval_seconds": 0.5, "max_poll_interval_seconds": 1.0}
ASSETS = ("video", "thumbnail", "last_frame")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


#: Where each flow-run process seen ran, and its PYTHONPATH: none may see the checkout.
_SEEN: dict[str, tuple[str, str]] = {}


def _flow_run_processes(root: psutil.Process) -> dict[str, psutil.Process]:
    """The flow-run processes under a worker, by flow run id."""
    found = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in root.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                environ = proc.environ()
                run_id = environ.get("PREFECT__FLOW_RUN_ID")
                if run_id:
                    found[run_id] = proc
                    _SEEN[run_id] = (proc.cwd(), environ.get("PYTHONPATH", ""))
    return found


def _kill_tree(root: psutil.Process) -> None:
    """SIGKILL a worker and everything under it at once: a machine gone."""
    procs = [root]
    with contextlib.suppress(psutil.NoSuchProcess):
        procs += root.children(recursive=True)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


async def test_many_runs_three_workers_one_killed(
    postgres_stack: PostgresStack,
    s3_server: Any,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefect_cli, luma_cli = command("prefect"), command("luma-prefect")
    assert prefect_cli and luma_cli
    aws = {
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    destination = f"{s3_bucket}/luma"
    env = {
        **postgres_stack.env,
        **aws,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "LUMA_PREFECT_RELAY_LIMIT": str(RELAY_LIMIT),
    }
    processes = Processes(logs=tmp_path)
    started = time.monotonic()
    try:
        await _run(processes, env, prefect_cli, luma_cli, destination, postgres_stack, tmp_path)
    finally:
        try:
            processes.stop_all()
        finally:
            leftovers = processes.ours()
            for proc in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            assert not leftovers, f"processes left behind: {leftovers}"
        print(f"\nscale-out test: {time.monotonic() - started:.0f} s")


async def _run(
    processes: Processes,
    env: dict[str, str],
    prefect_cli: str,
    luma_cli: str,
    destination: str,
    stack: PostgresStack,
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def report() -> str:
        return "\n".join(child.tail(15) for child in processes.children)

    simulator = processes.start(
        "simulator",
        [
            luma_cli,
            "simulate",
            "--port",
            "0",
            "--key",
            SIM_KEY,
            "--pending-seconds",
            "0.5",
            "--processing-seconds",
            str(PROCESSING_SECONDS),
        ],
        env,
    )
    sim_url = await eventually(lambda: _simulator_url(simulator), "the simulator's URL", 60.0)

    def sim(method: str, path: str, body: Any = None) -> Any:
        import httpx

        answer = httpx.request(method, f"{sim_url}/_simulator{path}", json=body, timeout=30)
        answer.raise_for_status()
        return answer.json()

    sim(
        "POST",
        "/faults",
        {"kind": "slow", "routes": ["query", "batch"], "delay_seconds": POLL_SECONDS},
    )
    processes.run(
        "save-credentials",
        [luma_cli, "save-credentials", "luma-relay"],
        {
            **env,
            "LUMA_RELAY_BASE_URL": sim_url,
            "LUMA_RELAY_API_KEY": SIM_KEY,
            "LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS": "1",  # the simulator's media: 127.0.0.1
        },
    )
    processes.run(
        "work-pool", [prefect_cli, "work-pool", "create", "luma-pool", "--type", "process"], env
    )
    processes.run(
        "sweep-queue",
        [
            prefect_cli,
            "work-queue",
            "create",
            "luma-sweeps",
            "--pool",
            "luma-pool",
            "--priority",
            "1",
        ],
        env,
    )
    # From the clone, as the README says; nothing of the checkout is recorded.
    deploy_log = processes.run(
        "deploy",
        [
            prefect_cli,
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(REPO_ROOT / "deployments" / "prefect.yaml"),
        ],
        env,
        timeout=300,
    )
    processes.run(
        "install-automations",
        [
            luma_cli,
            "install-automations",
            "--within",
            str(WITHIN_SECONDS),
            "--pending-within",
            str(PENDING_WITHIN_SECONDS),
        ],
        env,
    )
    workers = []
    for number in range(WORKERS):
        folder = tmp_path / f"worker-{number}"  # no checkout here: only the installed package
        folder.mkdir()
        workers.append(
            processes.start(
                f"worker-{number}",
                [
                    prefect_cli,
                    "worker",
                    "start",
                    "--pool",
                    "luma-pool",
                    "--type",
                    "process",
                    "--limit",
                    str(WORKER_LIMIT),
                    "--name",
                    f"scale-worker-{number}",
                ],
                {k: v for k, v in env.items() if k != "PYTHONPATH"},
                cwd=folder,
            )
        )

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("generate-video/generate-video")
            assert deployment.pull_steps == [], deployment.pull_steps
            assert "LUMA_PREFECT_ROOT" not in deploy_log and str(REPO_ROOT) not in json.dumps(
                deployment.model_dump(mode="json")
            )
            sweep_deployment = await client.read_deployment_by_name(
                "collect-pending/collect-pending"
            )
            run_ids = []
            for number in range(RUNS):
                run = await client.create_flow_run_from_deployment(
                    deployment.id,
                    parameters={
                        "prompt": f"scale {number:03d}: a kite over a windy beach",
                        "destination": destination,
                        **FAST,
                    },
                )
                run_ids.append(run.id)

        ledger = Ledger(storage_for(destination))

        def records() -> dict[str, Any]:
            found = {}
            for path in ledger.storage.list(".luma-ledger/generations"):
                name = path.rsplit("/", 1)[-1].removesuffix(".json")
                record = ledger.get(name)
                if record is not None:
                    found[record.generation_id] = record
            return found

        victim = psutil.Process(workers[0].pid)

        def mid_wait() -> list[str] | None:
            """Flow runs of the victim that submitted and now wait."""
            waiting = {r.flow_run_id for r in records().values() if r.status == "submitted"} & set(
                _flow_run_processes(victim)
            )
            return sorted(w for w in waiting if w) or None

        await eventually(mid_wait, "the victim worker to wait on generations", 600, 2.0, report)
        # Hold new submits (refused with 429: nothing is created, the client retries), so
        # the kill never falls between a relay accepting a submit and its ledger record:
        # that instant is "in doubt" by design (the submit intent), not the sweep's job.
        hold = sim(
            "POST", "/faults", {"kind": "rate_limit", "routes": ["submit"], "retry_after": "1"}
        )

        def recorded_all() -> bool:
            return sim("GET", "/counters")["submits_accepted"] == len(records())

        await eventually(recorded_all, "every accepted submit in the ledger", 60, 0.2, report)
        killed = set(_flow_run_processes(victim))
        _kill_tree(victim)
        killed_at = time.time()
        sim("DELETE", f"/faults/{hold['id']}")
        victims = {
            r.generation_id: r
            for r in records().values()
            if r.flow_run_id in killed and r.status != "published"
        }
        assert victims, "the victim had no generation in flight"

        sweeps: list[tuple[float, float]] = []

        async def everything_settled() -> bool:
            for worker in workers[1:]:
                _flow_run_processes(psutil.Process(worker.pid))  # where their runs run
            async with get_client() as client:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                    limit=RUNS,
                )
                open_runs = []
                for run in runs:
                    state = run.state.type.value if run.state else "?"
                    if state not in FINAL:  # the victim's too: the automations end them
                        open_runs.append(run)
                if not sweeps or time.time() - sweeps[-1][1] >= SWEEP_INTERVAL:
                    sweep = await client.create_flow_run_from_deployment(
                        sweep_deployment.id,
                        parameters={"destination": destination, "timeout_seconds": 120.0, **FAST},
                    )
                    sweeps.append((time.time(), 0.0))
                    final = await _wait_final(client, sweep.id)
                    assert final.state.type.value == "COMPLETED", f"{final.state}\n{report()}"
                    sweeps[-1] = (sweeps[-1][0], time.time())
            known = records()
            unfinished = [r for r in known.values() if r.status not in ("published", "failed")]
            accepted = sim("GET", "/counters")["submits_accepted"]
            return not open_runs and not unfinished and accepted == len(known)

        await eventually(everything_settled, "every run and generation to settle", 900, 3.0, report)

        counters = sim("GET", "/counters")
        final_records = records()
        async with get_client() as client:
            runs = {str(i): await client.read_flow_run(i) for i in run_ids}
            limit = await client.read_global_concurrency_limit_by_name(relay_limit_name(sim_url))

    # No duplicate submit: one paid generation per prompt, each recorded once.
    by_prompt = counters["submits_by_prompt"]
    assert all(count == 1 for count in by_prompt.values()), by_prompt
    assert counters["submits_accepted"] == len(by_prompt) == len(final_records)
    # Every paid generation published exactly once, its files matching the manifest.
    fs = storage_for(destination)
    for generation_id, record in final_records.items():
        assert record.status == "published", (generation_id, record.status)
        assert [h["status"] for h in record.history].count("published") == 1, record.history
        manifest = json.loads(fs.read_bytes(f"{generation_id}/manifest.json") or b"{}")
        assert manifest["generation_id"] == generation_id
        for asset in ASSETS:
            entry = manifest["assets"][asset]
            data = fs.read_bytes(f"{generation_id}/{entry['file']}")
            assert data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"]
    # The relay's limit, created on first use with the workers' default, never exceeded.
    assert limit.limit == RELAY_LIMIT
    assert 1 < counters["max_concurrent_requests"] <= RELAY_LIMIT, counters
    # The killed worker's runs were marked Crashed by the automation, and their
    # generations published within the liveness window plus one sweep interval.
    for generation_id, record in victims.items():
        run = runs[record.flow_run_id]
        assert run.state.type.value == "CRASHED", (run.id, run.state)
        published = final_records[generation_id].times()["published"].timestamp()
        sweep_run = max((end - start for start, end in sweeps), default=0.0)
        bound = WITHIN_SECONDS + TRIGGER_SLACK + SWEEP_INTERVAL + sweep_run
        assert published - killed_at <= bound, (published - killed_at, bound)
    # The victim's runs that had not started were Crashed by the Pending automation, and
    # paid nothing; every other run completed.
    recorded_runs = {r.flow_run_id for r in final_records.values()}
    never_started = {
        i
        for i, r in runs.items()
        if i not in killed and r.state.type.value == "CRASHED" and i not in recorded_runs
    }
    for run_id in never_started:
        assert "never started" in (runs[run_id].state.message or ""), runs[run_id].state
    others = [r for i, r in runs.items() if i not in killed and i not in never_started]
    assert all(r.state.type.value == "COMPLETED" for r in others), [
        (str(r.id), r.state.type.value) for r in others if r.state.type.value != "COMPLETED"
    ]
    # The flow runs ran outside the checkout (the process worker gives each a temporary
    # folder), the checkout on no search path: the deployments resolved in the package.
    assert _SEEN, "no flow-run process was ever seen"
    for run_id, (cwd, pythonpath) in _SEEN.items():
        assert not Path(cwd).resolve().is_relative_to(REPO_ROOT), (run_id, cwd)
        assert str(REPO_ROOT) not in pythonpath, (run_id, pythonpath)
    print(
        f"\n{len(final_records)} generations, {len(victims)} recovered from the killed worker, "
        f"max {counters['max_concurrent_requests']} relay requests at once, "
        f"{len(never_started)} never-started runs crashed, {len(sweeps)} sweeps"
    )


async def _wait_final(client: Any, flow_run_id: Any) -> Any:
    async def probe() -> Any:
        run = await client.read_flow_run(flow_run_id)
        return run if run.state and run.state.type.value in FINAL else None

    return await eventually(probe, f"sweep {flow_run_id} to end", 600, 1.0)
