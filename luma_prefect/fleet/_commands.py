"""The `luma-prefect` commands for running at scale: `serve` and `install-automations`.

Registered on the main command line by `luma_prefect.cli`; cheap to import like it.
"""

from __future__ import annotations

import typer

from luma_prefect.fleet._liveness import DEFAULT_PENDING_WITHIN_SECONDS, DEFAULT_WITHIN_SECONDS
from luma_prefect.fleet._serve import DEFAULT_LIMIT, DEFAULT_SWEEP_INTERVAL

__all__ = ["register"]


def serve(
    credentials: str = typer.Option(
        "luma-relay", envvar="LUMA_PREFECT_CREDENTIALS_BLOCK", help="Saved credentials block."
    ),
    destination: str = typer.Option(
        "luma-output",
        envvar="LUMA_PREFECT_DESTINATION",
        help="Folder or fsspec URL (s3://...) for files, manifests and the ledger.",
    ),
    sweep_interval: int = typer.Option(
        DEFAULT_SWEEP_INTERVAL, help="Seconds between collect-pending runs."
    ),
    limit: int = typer.Option(DEFAULT_LIMIT, help="Most flow runs at once in this process."),
) -> None:
    """Serve the four deployments from the installed package, without a work pool.

    Example:
        ```console
        $ luma-prefect serve --credentials luma-relay --destination s3://media/luma
        ```
    """
    from luma_prefect.fleet._serve import serve_deployments

    if sweep_interval < 1 or limit < 1:
        typer.secho("error: --sweep-interval and --limit must be at least 1.", err=True)
        raise typer.Exit(code=2)
    serve_deployments(credentials, destination, sweep_interval, limit)


def install_automations(
    within: float = typer.Option(
        DEFAULT_WITHIN_SECONDS,
        help="Seconds without a heartbeat after which a flow run is marked Crashed "
        "(more than PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the workers).",
    ),
    pending_within: float = typer.Option(
        DEFAULT_PENDING_WITHIN_SECONDS,
        help="Seconds a flow run may stay Pending (claimed, not started) before it is "
        "marked Crashed: its worker died before the run began.",
    ),
    all_flow_runs: bool = typer.Option(
        False, help="Watch every flow run, not only those tagged luma."
    ),
) -> None:
    """Install (or update) the automations that mark flow runs of dead workers Crashed.

    Example:
        ```console
        $ luma-prefect install-automations --within 90
        ```
    """
    import asyncio

    from luma_prefect.fleet._liveness import install_automations

    if within < 10 or pending_within < 10:
        typer.secho(
            "error: --within and --pending-within must be at least 10 seconds (Prefect's minimum).",
            err=True,
        )
        raise typer.Exit(code=2)
    try:
        installed = asyncio.run(
            install_automations(
                within, pending_within_seconds=pending_within, all_flow_runs=all_flow_runs
            )
        )
    except Exception as exc:  # no server, refused...: one line, no traceback
        typer.secho(f"error: could not install the automations: {exc}", err=True)
        raise typer.Exit(code=1) from None
    for name, action, automation_id in installed:
        typer.echo(f"{action.capitalize()} automation {name!r} ({automation_id}).")
    typer.echo(
        f"Flow runs silent for {within:g} s, or Pending for {pending_within:g} s, are marked "
        "Crashed. Run the workers with PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 (or less than "
        "the window)."
    )


def register(app: typer.Typer) -> None:
    """Add the commands to the `luma-prefect` command line."""
    app.command("serve")(serve)
    app.command("install-automations")(install_automations)
