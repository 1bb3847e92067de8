"""The PostgreSQL-backed Prefect server: a flow run from another process lands in
PostgreSQL (the base of the end-to-end and scale-out tests)."""

from __future__ import annotations

import sys
import uuid

import pytest

from ._postgres import why_no_postgres
from ._stack import Stack

FLOW = """
from prefect import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow(name="postgres-smoke")
def smoke(x: int) -> int:
    return double(x)

state = smoke(21, return_state=True)
assert state.is_completed() and state.result() == 42, state
print("FLOW_RUN_ID", state.state_details.flow_run_id)
"""


async def test_a_flow_run_lands_in_postgresql(stack: Stack) -> None:
    import asyncpg

    if stack.database_url is None:
        pytest.skip(f"the end-to-end server runs on SQLite here: {why_no_postgres()}")
    output = stack.processes.run(
        "postgres-smoke-flow", [sys.executable, "-c", FLOW], stack.env, timeout=180
    )
    flow_run_id = uuid.UUID(output.split("FLOW_RUN_ID", 1)[1].split()[0])

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
    assert run.state is not None and run.state.type.value == "COMPLETED"

    # Read back from PostgreSQL itself: the server keeps its runs there, not in SQLite.
    dsn = stack.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
            "WHERE r.id = $1",
            flow_run_id,
        )
        task_runs = await connection.fetchval(
            "SELECT count(*) FROM task_run WHERE flow_run_id = $1", flow_run_id
        )
    finally:
        await connection.close()
    assert [(r["name"], r["state_type"]) for r in rows] == [("postgres-smoke", "COMPLETED")]
    assert task_runs == 1
