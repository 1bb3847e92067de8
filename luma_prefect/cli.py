"""The `luma-prefect` command line.

Kept cheap to import: every command imports what it needs inside itself.

Example:
    ```console
    $ luma-prefect simulate --style task --pending-seconds 0.5
    ```
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from luma_prefect.simulator import RelaySimulator

__all__ = ["app", "main"]

app = typer.Typer(
    name="luma-prefect",
    help="Luma Dream Machine video generation through API relays, with Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Luma Dream Machine video generation through API relays, with Prefect."""


@app.command()
def simulate(
    port: int = typer.Option(0, help="Port on 127.0.0.1; 0 picks a free one."),
    key: str | None = typer.Option(
        None, help="API key the simulator accepts; a random sk-sim-... key when not given."
    ),
    style: str = typer.Option("generations", help="API style: generations, task or official."),
    prefix: str = typer.Option("/luma", help="Route prefix (generations and task styles)."),
    pending_seconds: float = typer.Option(1.0, help="Seconds a generation stays pending."),
    processing_seconds: float = typer.Option(3.0, help="Then seconds it stays processing."),
    failure_ratio: float = typer.Option(0.0, help="Share of generations that end failed."),
    seed: int = typer.Option(0, help="Seed of failures and timing jitter."),
) -> None:
    """Run an offline Luma relay on 127.0.0.1 until Ctrl-C, and print how to call it.

    Example:
        ```console
        $ luma-prefect simulate --port 8765 --key sk-test
        ```
    """
    import signal
    import threading

    from luma_prefect.simulator import RelaySimulator, SimulatorConfig

    try:
        config = SimulatorConfig(
            style=style,  # type: ignore[arg-type]
            route_prefix=prefix,
            api_key=key,
            pending_seconds=pending_seconds,
            processing_seconds=processing_seconds,
            failure_ratio=failure_ratio,
            seed=seed,
            port=port,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    simulator = RelaySimulator(config)
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    # SIGTERM (kill, process managers) stops as cleanly as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
    try:
        simulator.start()
        typer.echo(_usage(simulator))
        # A timed wait keeps the main thread responsive to Ctrl-C.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        typer.echo(f"Cannot listen on 127.0.0.1:{port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        simulator.stop()
    typer.echo("Simulator stopped.")


def _usage(sim: RelaySimulator) -> str:
    base, auth = sim.base_url, shlex.quote(f"Authorization: Bearer {sim.api_key}")
    json_header = shlex.quote("Content-Type: application/json")
    if sim.style == "official":
        root = f"{base}/dream-machine/v1/generations"
        submit = {"prompt": "a red fox in the snow", "aspect_ratio": "16:9"}
        poll = f"{root}/<id>"
        link = "assets.video"
    else:
        root = f"{base}{sim.route_prefix}/generations"
        submit = {"user_prompt": "a red fox in the snow", "aspect_ratio": "16:9"}
        poll = (
            f"{root}/<id>"
            if sim.style == "generations"
            else f"{base}{sim.route_prefix}/task?id=<id>"
        )
        link = "video.download_url" if sim.style == "generations" else "data.video.url"
    body = shlex.quote(json.dumps(submit))
    lines = [
        f"Luma relay simulator ({sim.style} style) on {base}  -  Ctrl-C to stop",
        "",
        f"export LUMA_RELAY_BASE_URL={base}",
        f"export LUMA_RELAY_API_KEY={sim.api_key}",
        f"export LUMA_RELAY_API_STYLE={sim.style}",
        f"export LUMA_RELAY_ROUTE_PREFIX={sim.route_prefix}",
        "",
        "# submit (answers the new generation and its id):",
        f"curl -s -X POST {shlex.quote(root)} -H {auth} -H {json_header} -d {body}",
        "# poll until the state is completed:",
        f"curl -s {shlex.quote(poll)} -H {auth}",
    ]
    if sim.style == "generations":
        batch = shlex.quote(json.dumps({"ids": ["<id>"]}))
        lines += [
            "# poll many at once:",
            f"curl -s -X POST {shlex.quote(base + sim.route_prefix + '/tasks')} -H {auth} "
            f"-H {json_header} -d {batch}",
        ]
    lines += [
        f"# download: the {link} link of the completed answer (no key needed):",
        f"curl -s -o video.mp4 '<{link}>'",
        "",
        f"Admin (no key): curl -s {base}/_simulator/counters",
    ]
    return "\n".join(lines)


def main() -> None:
    """Entry point of the `luma-prefect` console script.

    Example:
        ```python
        from luma_prefect.cli import main

        main()  # reads sys.argv
        ```
    """
    app()


if __name__ == "__main__":
    main()
