"""Running on many machines: dead-worker detection and serving (relay-wide limits live in
`luma_prefect.tasks._throttle`, which the tasks use).

Kept cheap to import (the command line imports it): Prefect is imported where used.
"""

from luma_prefect.fleet._liveness import (
    AUTOMATION_NAME,
    DEFAULT_WITHIN_SECONDS,
    install_automations,
    zombie_automation,
)
from luma_prefect.fleet._serve import build_deployments, serve_deployments

__all__ = [
    "AUTOMATION_NAME",
    "DEFAULT_WITHIN_SECONDS",
    "build_deployments",
    "install_automations",
    "serve_deployments",
    "zombie_automation",
]
