"""`RelaySimulator`: the relay app served by uvicorn on loopback, in a background thread."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from luma_prefect.simulator._config import Fault, FaultKind, SimulatorConfig, Style
from luma_prefect.simulator._counters import Counters
from luma_prefect.simulator._state import SimulatorState

if TYPE_CHECKING:
    import uvicorn
    from typing_extensions import Self

    from luma_prefect.simulator._app import Relay

__all__ = ["RelaySimulator", "SimulatorTLS", "run_simulator"]

HOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class SimulatorTLS:
    """https for a simulator: its certificate and key files (or a server SSL context), and
    the CA bundle its clients trust (what `credentials()` passes as `verify`).

    Example:
        ```python
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path("server.pem")
        ca.cert_pem.write_to_path("ca.pem")
        tls = SimulatorTLS(certfile="server.pem", ca_file="ca.pem")
        with run_simulator(tls=tls) as sim:
            assert sim.base_url.startswith("https://")
        ```
    """

    certfile: str | None = None
    keyfile: str | None = None
    context: ssl.SSLContext | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if (self.certfile is None) == (self.context is None):
            raise ValueError("give either certfile (and keyfile) or context")


class RelaySimulator:
    """An offline Luma relay on 127.0.0.1: real HTTP, simulated time, faults on demand.

    Prefer `run_simulator` in tests; `start()`/`stop()` suit long-running hosts (the CLI).
    Everything here is safe to call from any thread while the server runs.

    Example:
        ```python
        sim = RelaySimulator(SimulatorConfig(style="task")).start()
        try:
            print(sim.base_url, sim.api_key)
        finally:
            sim.stop()
        ```
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        tls: SimulatorTLS | None = None,
        **overrides: Any,
    ) -> None:
        config = config or SimulatorConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config: SimulatorConfig = config.with_key()
        self._state = SimulatorState(self.config)
        self.tls = tls
        self._port = self.config.port
        self._relay: Relay | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def __repr__(self) -> str:
        where = self.base_url if self._relay else "not started"
        return f"RelaySimulator(style={self.style!r}, {where})"

    # -- identity ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>` (`https://` with `tls`), known once started.

        Example:
            ```python
            httpx.get(f"{sim.base_url}/_simulator/counters")
            ```
        """
        if self._relay is None:
            raise RuntimeError("the simulator has no address yet: call start() first")
        return self._relay.base_url

    @property
    def api_key(self) -> str:
        """The Bearer key the relay accepts (random `sk-sim-...` unless configured).

        Example:
            ```python
            headers = {"Authorization": f"Bearer {sim.api_key}"}
            ```
        """
        return self.config.api_key or ""

    @property
    def style(self) -> Style:
        """The API style served: `generations`, `task` or `official`.

        Example:
            ```python
            with run_simulator(style="task") as sim:
                assert sim.style == "task"
            ```
        """
        return self.config.style

    @property
    def route_prefix(self) -> str:
        """The path before `/generations` (e.g. `/luma`); unused by the official style.

        Example:
            ```python
            url = f"{sim.base_url}{sim.route_prefix}/generations"
            ```
        """
        return self.config.route_prefix

    @property
    def running(self) -> bool:
        """Whether the server thread is serving.

        Example:
            ```python
            sim.stop()
            assert not sim.running
            ```
        """
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1 (a free port, or the configured one) and serve until `stop()`.

        A stopped simulator can start again: same port, same generations.

        Example:
            ```python
            sim = RelaySimulator().start()
            ```
        """
        if self.running:
            raise RuntimeError("the simulator is already running")
        import uvicorn

        from luma_prefect.simulator._app import build_app
        from luma_prefect.simulator._responses import install_quiet_drops

        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listener says TCP; with proto 0, Nagle + delayed ACK add 40 ms to every answer.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self._port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        scheme = "https" if self.tls else "http"
        app, self._relay = build_app(self._state, f"{scheme}://{HOST}:{self._port}")
        install_quiet_drops()
        tls = self.tls
        context = tls.context if tls else None
        config = uvicorn.Config(
            app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            ssl_certfile=tls.certfile if tls else None,
            ssl_keyfile=tls.keyfile if tls else None,
            ssl_context_factory=(lambda *_: context) if context else None,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"luma-simulator-{self._port}",
            daemon=True,
        )
        self._server, self._thread, self._socket = server, thread, sock
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the relay simulator did not start on {self.base_url}")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop serving and release the thread and the socket; safe to call twice.

        Example:
            ```python
            sim.stop()
            ```
        """
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(_STOP_TIMEOUT)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- steering ----------------------------------------------------------------------

    def advance(self, seconds: float) -> float:
        """Move simulated time forward (either clock mode); the new simulated time.

        Example:
            ```python
            sim.advance(600)  # every generation submitted so far is now terminal
            ```
        """
        return self._state.advance(seconds)

    def add_fault(self, fault: Fault | FaultKind | str, **fields: Any) -> Fault:
        """Switch a fault on; give a `Fault`, or a kind and its fields. Returns the `Fault`.

        Example:
            ```python
            f = sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=503, times=3))
            sim.add_fault(FaultKind.RATE_LIMIT, retry_after="1", times=1)
            ```
        """
        if not isinstance(fault, Fault):
            fault = Fault(FaultKind(fault) if not isinstance(fault, FaultKind) else fault, **fields)
        elif fields:
            fault = dataclasses.replace(fault, **fields)
        self._state.add_fault(fault)
        return fault

    def remove_fault(self, fault: Fault | str) -> bool:
        """Switch a fault off (the `Fault` given to `add_fault`, or an admin id); found or not.

        Example:
            ```python
            sim.remove_fault(f)
            ```
        """
        return self._state.remove_fault(fault)

    def clear_faults(self) -> None:
        """Switch every fault off.

        Example:
            ```python
            sim.clear_faults()
            ```
        """
        self._state.clear_faults()

    def faults(self) -> list[dict[str, Any]]:
        """The faults switched on: id, fault fields, `remaining` times, times `fired`.

        Example:
            ```python
            assert sim.faults() == []  # every `times`-limited fault has retired
            ```
        """
        return self._state.faults()

    def counters(self) -> Counters:
        """A snapshot of the request and byte counters.

        Example:
            ```python
            assert sim.counters().requests.get("query", 0) == 3
            ```
        """
        return self._state.counters()

    def reset_counters(self) -> None:
        """Zero every counter (generations and faults stay).

        Example:
            ```python
            sim.reset_counters()
            ```
        """
        self._state.reset_counters()

    # -- generations -------------------------------------------------------------------

    def create_generation(
        self,
        prompt: str = "",
        state: str = "completed",
        *,
        aspect_ratio: str = "16:9",
        failure_reason: str | None = None,
    ) -> str:
        """Seed a generation directly (no submit counted, no faults); its id.

        `state` is where it starts (pending/processing/completed/failed); it then moves on
        with the clock like any other.

        Example:
            ```python
            gid = sim.create_generation(prompt="cat dance", state="completed")
            ```
        """
        return self._state.create(prompt, state, aspect_ratio, failure_reason)

    def generation(self, generation_id: str) -> dict[str, Any]:
        """The generation as the relay renders it now (the inner object in the task style).

        Raises `KeyError` for an unknown id.

        Example:
            ```python
            assert sim.generation(gid)["state"] == "completed"
            ```
        """
        if self._relay is None:
            raise RuntimeError("start the simulator first: links need its address")
        rendered = self._relay.render_id(generation_id)
        if rendered is None:
            raise KeyError(generation_id)
        return rendered

    def generation_ids(self) -> list[str]:
        """Ids of every generation, submitted or seeded, oldest first.

        Example:
            ```python
            assert gid in sim.generation_ids()
            ```
        """
        return self._state.ids()

    def connection(self) -> dict[str, str | bool]:
        """How to reach this simulator, named as the fields of `LumaRelayCredentials`.

        A plain mapping, so the simulator needs nothing of the product but the wire shapes;
        the pytest plugin's `luma_simulator.credentials()` builds the block from it.

        Its media links are on 127.0.0.1, so the block allows private media hosts; with
        `tls`, it trusts the simulator's CA (`verify`).

        Example:
            ```python
            from luma_prefect import LumaRelayCredentials

            credentials = LumaRelayCredentials.model_validate(sim.connection())
            ```
        """
        return {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "api_style": self.style,
            "route_prefix": self.route_prefix,
            # Trust the certificate made for this run; its media are on loopback, on purpose.
            "verify": self.tls.ca_file if self.tls and self.tls.ca_file else True,
            "allow_private_media_hosts": True,
        }


@contextmanager
def run_simulator(
    config: SimulatorConfig | None = None, *, tls: SimulatorTLS | None = None, **overrides: Any
) -> Iterator[RelaySimulator]:
    """Run a relay simulator for the duration of a `with` block.

    Give a `SimulatorConfig`, or its fields as keyword arguments (or both: the keywords win).

    Example:
        ```python
        with run_simulator(style="official", manual_clock=True) as sim:
            sim.advance(10)
        ```
    """
    simulator = RelaySimulator(config, tls=tls, **overrides).start()
    try:
        yield simulator
    finally:
        simulator.stop()
