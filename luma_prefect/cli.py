"""The `luma-prefect` command line.

Kept cheap to import: every command imports what it needs inside itself.

Commands: `simulate` (an offline relay), `generate` and `collect` (the main job on a real
relay), `save-credentials` (a block from the environment), `demo` (the main job on the
simulator and Prefect's embedded API), `serve` and `install-automations` (running at
scale, in `luma_prefect.fleet`).

Example:
    ```console
    $ luma-prefect simulate --style task --pending-seconds 0.5
    $ luma-prefect demo
    ```
"""

from __future__ import annotations

import json
import os
import shlex
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from luma_prefect.fleet._commands import register as _register_fleet_commands

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
    # Ctrl-C and SIGTERM (kill, process managers) both stop cleanly. SIGINT is handled
    # explicitly: a process started in the background inherits it ignored.
    handled = (signal.SIGINT, signal.SIGTERM) if in_main else ()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
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


def _credentials(name: str | None) -> Any:
    """A saved block by name; else the environment's relay; else the default block name."""
    from luma_prefect.credentials import ENV_BASE_URL, LumaRelayCredentials

    if name:
        return name
    if os.environ.get(ENV_BASE_URL):
        return LumaRelayCredentials.from_env()
    return "luma-relay"


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the video shows."),
    aspect_ratio: str = typer.Option("16:9", help="16:9, 9:16, 1:1, 4:3, 3:4, 21:9 or 9:21."),
    image_url: str | None = typer.Option(None, help="Start frame: http(s) URL or data URI."),
    credentials: str | None = typer.Option(
        None, help="Saved LumaRelayCredentials block (default: LUMA_RELAY_* or luma-relay)."
    ),
    destination: str = typer.Option("luma-output", help="Folder or fsspec URL for the files."),
    timeout: float = typer.Option(1800.0, help="Longest wait, in seconds."),
    poll_interval: float = typer.Option(5.0, help="First interval between polls, in seconds."),
) -> None:
    """Generate one video, download its files and publish them (the generate-video flow).

    Example:
        ```console
        $ luma-prefect generate "a red fox in the snow" --destination ./luma-output
        ```
    """
    import asyncio

    from luma_prefect._exceptions import LumaError
    from luma_prefect.flows import generate_video

    try:
        published = asyncio.run(
            generate_video(
                prompt=prompt,
                aspect_ratio=aspect_ratio,  # type: ignore[arg-type]
                image_url=image_url,
                credentials=_credentials(credentials),
                destination=destination,
                timeout_seconds=timeout,
                poll_interval_seconds=poll_interval,
            )
        )
    except (LumaError, ValueError) as exc:
        _fail(str(exc))
    _print_published([published])


@app.command()
def collect(
    generation_ids: list[str] = typer.Argument(..., help="Ids of submitted generations."),
    credentials: str | None = typer.Option(
        None, help="Saved LumaRelayCredentials block (default: LUMA_RELAY_* or luma-relay)."
    ),
    destination: str = typer.Option("luma-output", help="Folder or fsspec URL for the files."),
    timeout: float = typer.Option(1800.0, help="Longest wait for the batch, in seconds."),
    poll_interval: float = typer.Option(5.0, help="First interval between polls, in seconds."),
) -> None:
    """Wait for existing generations, then download and publish each (collect-generations).

    Example:
        ```console
        $ luma-prefect collect 4665a07c-7641-4809-a133-10786201bb56
        ```
    """
    import asyncio

    from luma_prefect._exceptions import LumaError
    from luma_prefect.flows import collect_generations

    try:
        outcomes = asyncio.run(
            collect_generations(
                generation_ids=generation_ids,
                credentials=_credentials(credentials),
                destination=destination,
                timeout_seconds=timeout,
                poll_interval_seconds=poll_interval,
                fail_when="never",
            )
        )
    except (LumaError, ValueError) as exc:
        _fail(str(exc))
    _print_outcomes(outcomes)
    if not any(o.ok for o in outcomes):
        raise typer.Exit(code=1)


@app.command("save-credentials")
def save_credentials(
    name: str = typer.Argument("luma-relay", help="Name of the block to save."),
    overwrite: bool = typer.Option(True, help="Replace a block of that name."),
) -> None:
    """Save a LumaRelayCredentials block from LUMA_RELAY_BASE_URL / _API_KEY / _API_STYLE.

    Example:
        ```console
        $ LUMA_RELAY_BASE_URL=https://relay.example LUMA_RELAY_API_KEY=sk-... \\
            luma-prefect save-credentials luma-relay
        ```
    """
    from luma_prefect._exceptions import LumaError
    from luma_prefect.credentials import LumaRelayCredentials

    try:
        block = LumaRelayCredentials.from_env()
    except LumaError as exc:
        _fail(str(exc))
    block.save(name, overwrite=overwrite)
    typer.echo(
        f"Saved LumaRelayCredentials block {name!r} for {block.base_url} ({block.api_style} style)."
    )


@app.command()
def demo(
    destination: str = typer.Option("luma-output", help="Folder for the files."),
    batch: int = typer.Option(3, help="Generations in the collect-generations batch."),
) -> None:
    """Run the main job end to end on the built-in simulator and Prefect's embedded API.

    Example:
        ```console
        $ luma-prefect demo
        ```
    """
    _quiet_prefect()
    import asyncio

    from luma_prefect._models import GenerationRequest
    from luma_prefect.flows import collect_generations, generate_video
    from luma_prefect.simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(pending_seconds=1.0, processing_seconds=3.0, duration_jitter=0.3)
    with run_simulator(config) as sim:
        typer.echo(f"Relay simulator at {sim.base_url} ({sim.style} style).")
        credentials = sim.credentials()
        typer.echo("1/2 generate-video: submit, wait, download, publish ...")
        published = asyncio.run(
            generate_video(
                prompt="a red fox running through fresh snow, golden hour",
                credentials=credentials,
                destination=destination,
                poll_interval_seconds=0.5,
                max_poll_interval_seconds=2.0,
            )
        )
        _print_published([published])

        async def submit_batch() -> list[str]:
            async with credentials.get_client() as client:
                return [
                    (await client.submit_generation(GenerationRequest(prompt=p))).id
                    for p in _DEMO_PROMPTS[:batch]
                ]

        ids = asyncio.run(submit_batch())
        typer.echo(f"2/2 collect-generations: {len(ids)} generations submitted elsewhere ...")
        outcomes = asyncio.run(
            collect_generations(
                generation_ids=ids,
                credentials=credentials,
                destination=destination,
                poll_interval_seconds=0.5,
                max_poll_interval_seconds=2.0,
            )
        )
        _print_outcomes(outcomes)
        counters = sim.counters()
        typer.echo(
            f"Relay requests: {sum(counters.requests.values())} "
            f"({counters.submits_accepted} paid submits), {counters.bytes_served:,} bytes."
        )
    typer.secho(
        f"Done: files and manifests are under {os.path.abspath(destination)}", fg=typer.colors.GREEN
    )


_DEMO_PROMPTS = [
    "waves rolling onto a black sand beach at dawn",
    "a paper boat drifting down a rainy street",
    "timelapse of clouds over a mountain lake",
    "a hummingbird hovering over a red flower",
    "city lights flickering on at dusk, aerial view",
]


def _quiet_prefect() -> None:
    # Telemetry logs a network error offline; the temporary server's shutdown is chatty.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")


def _print_published(published: list[Any]) -> None:
    for item in published:
        typer.echo(f"Generation {item.generation_id}:")
        for name, asset in item.downloaded.assets.items():
            typer.echo(f"  {name:<11} {asset.path}  ({asset.bytes:,} bytes)")
        typer.echo(f"  {'manifest':<11} {item.manifest_path}")


def _print_outcomes(outcomes: list[Any]) -> None:
    published = [o.published for o in outcomes if o.published is not None]
    _print_published(published)
    for outcome in outcomes:
        if not outcome.ok:
            typer.secho(
                f"Generation {outcome.generation_id}: {outcome.status}: {outcome.error}",
                fg=typer.colors.YELLOW,
            )


_register_fleet_commands(app)  # serve, install-automations


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
