"""An offline Luma relay for demos, tests and benchmarks (like moto for AWS).

A real HTTP server on 127.0.0.1 that answers in the relays' wire shapes (styles
`generations`, `task` and `official`), moves generations through their states on a
simulated clock, serves real media with Range support, and misbehaves on demand
(`Fault`). Importing this package starts nothing.

Example:
    ```python
    import httpx
    from luma_prefect.simulator import Fault, FaultKind, run_simulator

    with run_simulator(manual_clock=True) as sim:
        sim.add_fault(Fault(FaultKind.RATE_LIMIT, retry_after="1", times=1))
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        url = f"{sim.base_url}/luma/generations"
        first = httpx.post(url, json={"user_prompt": "cat dance"}, headers=headers)
        assert first.status_code == 429
        created = httpx.post(url, json={"user_prompt": "cat dance"}, headers=headers).json()
        sim.advance(600)
        assert sim.generation(created["id"])["state"] == "completed"
    ```
"""

from luma_prefect.simulator._config import Fault, FaultKind, SimulatorConfig
from luma_prefect.simulator._counters import Counters
from luma_prefect.simulator._server import RelaySimulator, SimulatorTLS, run_simulator

__all__ = [
    "Counters",
    "Fault",
    "FaultKind",
    "RelaySimulator",
    "SimulatorConfig",
    "SimulatorTLS",
    "run_simulator",
]
