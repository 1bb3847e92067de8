"""Running on many machines: dead-worker detection and serving (relay-wide limits live in
`luma_prefect.tasks._throttle`, which the tasks use).

Kept cheap to import (the command line imports it): Prefect is imported where used.
"""

from luma_prefect.fleet._liveness import (
    AUTOMATION_NAME,
    DEFAULT_PENDING_WITHIN_SECONDS,
    DEFAULT_WITHIN_SECONDS,
    PENDING_AUTOMATION_NAME,
    install_automations,
    pending_automation,
    zombie_automation,
)
from luma_prefect.fleet._serve import build_deployments, serve_deployments

__all__ = [
    "AUTOMATION_NAME",
    "DEFAULT_PENDING_WITHIN_SECONDS",
    "DEFAULT_WITHIN_SECONDS",
    "PENDING_AUTOMATION_NAME",
    "build_deployments",
    "install_automations",
    "pending_automation",
    "serve_deployments",
    "zombie_automation",
]
