"""Serve every luma_prefect deployment from one process, without a work pool.

Run from the repository root, with PREFECT_API_URL pointing at your Prefect server:

    python deployments/serve.py --credentials luma-relay --destination "$PWD/luma-output"

It registers `generate-video`, `generate-videos` and `collect-generations` (started from the
UI or `prefect deployment run`) and `collect-pending` (every 10 minutes), then runs their
flow runs as they come, each in a child process, until stopped with Ctrl-C or SIGTERM
(Prefect then pauses the served deployments until they are served again).
A local destination is made absolute here, so the runs and the UI show where files land.
"""

from __future__ import annotations

import argparse
import os

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from luma_prefect.flows import (
    collect_generations,
    collect_pending,
    generate_video,
    generate_videos,
)

DEFAULT_CREDENTIALS = os.environ.get("LUMA_PREFECT_CREDENTIALS_BLOCK", "luma-relay")
DEFAULT_DESTINATION = os.environ.get("LUMA_PREFECT_DESTINATION", "luma-output")


def build_deployments(
    credentials: str = DEFAULT_CREDENTIALS,
    destination: str = DEFAULT_DESTINATION,
    sweep_interval_seconds: int = 600,
) -> list[RunnerDeployment]:
    """The runner deployments this process serves.

    Example:
        ```python
        from prefect import serve
        serve(*build_deployments(credentials="luma-relay", destination="/data/luma"))
        ```
    """
    if "://" not in destination:
        destination = os.path.abspath(os.path.expanduser(destination))
    common = {"credentials": credentials, "destination": destination}
    return [
        generate_video.to_deployment(
            name="generate-video",
            parameters={**common, "prompt": "a red fox running through fresh snow"},
            description="Generate one Luma video from a prompt and publish its files.",
            tags=["luma"],
        ),
        generate_videos.to_deployment(
            name="generate-videos",
            parameters=common,
            description="Generate many Luma videos at once, bounded.",
            tags=["luma"],
        ),
        collect_generations.to_deployment(
            name="collect-generations",
            parameters=common,
            description="Wait for existing Luma generations and publish them.",
            tags=["luma"],
        ),
        collect_pending.to_deployment(
            name="collect-pending",
            parameters=common,
            interval=sweep_interval_seconds,
            description="Finish every ledger generation not yet published (every 10 min).",
            tags=["luma"],
        ),
    ]


def main() -> None:
    """Parse the command line and serve until stopped.

    Example:
        ```sh
        python deployments/serve.py --credentials luma-relay --destination ./luma-output
        ```
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--credentials",
        default=DEFAULT_CREDENTIALS,
        help="name of the saved LumaRelayCredentials block",
    )
    parser.add_argument(
        "--destination",
        default=DEFAULT_DESTINATION,
        help="folder or fsspec URL for files, manifests and the ledger",
    )
    parser.add_argument(
        "--sweep-interval", type=int, default=600, help="seconds between collect-pending runs"
    )
    args = parser.parse_args()
    if args.sweep_interval < 1:
        parser.error("--sweep-interval must be at least 1 second")
    serve(
        *build_deployments(args.credentials, args.destination, args.sweep_interval),
        limit=8,
    )


if __name__ == "__main__":
    main()
