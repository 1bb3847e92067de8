"""`luma-prefect serve`: every deployment from one process, without a work pool or checkout.

The flows are imported from the installed package, so this needs only
`pip install luma-prefect` and PREFECT_API_URL. Flow runs start in child processes of this
one as they come; Ctrl-C or SIGTERM stops it (Prefect then pauses the served deployments).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEFAULT_SWEEP_INTERVAL", "build_deployments", "serve_deployments"]

DEFAULT_SWEEP_INTERVAL = 600
DEFAULT_LIMIT = 8


def build_deployments(
    credentials: str = "luma-relay",
    destination: str = "luma-output",
    sweep_interval_seconds: int = DEFAULT_SWEEP_INTERVAL,
) -> list[Any]:
    """The four runner deployments: generate-video, generate-videos, collect-generations,
    and collect-pending every `sweep_interval_seconds`. A local destination is made
    absolute, so runs and the UI show where files land.

    Example:
        ```python
        from prefect import serve
        serve(*build_deployments(credentials="luma-relay", destination="/data/luma"))
        ```
    """
    from luma_prefect.flows import (
        collect_generations,
        collect_pending,
        generate_video,
        generate_videos,
    )
    from luma_prefect.tasks._throttle import RUN_TAG

    if "://" not in destination:
        destination = os.path.abspath(os.path.expanduser(destination))
    common = {"credentials": credentials, "destination": destination}
    tags = [RUN_TAG]
    return [
        generate_video.to_deployment(
            name="generate-video",
            parameters={**common, "prompt": "a red fox running through fresh snow"},
            description="Generate one Luma video from a prompt and publish its files.",
            tags=tags,
        ),
        generate_videos.to_deployment(
            name="generate-videos",
            parameters=common,
            description="Generate many Luma videos at once, bounded.",
            tags=tags,
        ),
        collect_generations.to_deployment(
            name="collect-generations",
            parameters=common,
            description="Wait for existing Luma generations and publish them.",
            tags=tags,
        ),
        collect_pending.to_deployment(
            name="collect-pending",
            parameters=common,
            interval=sweep_interval_seconds,
            description=(
                "Finish every ledger generation not yet published "
                f"(every {sweep_interval_seconds} s)."
            ),
            tags=tags,
        ),
    ]


def serve_deployments(
    credentials: str = "luma-relay",
    destination: str = "luma-output",
    sweep_interval_seconds: int = DEFAULT_SWEEP_INTERVAL,
    limit: int = DEFAULT_LIMIT,
) -> None:
    """Register the deployments and run their flow runs until stopped.

    Example:
        ```python
        serve_deployments("luma-relay", "/data/luma", sweep_interval_seconds=300)
        ```
    """
    from prefect import serve

    if sweep_interval_seconds < 1:
        raise ValueError("the sweep interval must be at least 1 second")
    serve(*build_deployments(credentials, destination, sweep_interval_seconds), limit=limit)
