"""Running on many machines: relay-wide limits, dead-worker detection, serving.

Kept cheap to import (the command line imports it): Prefect is imported where used.
"""

from luma_prefect.fleet._liveness import (
    AUTOMATION_NAME,
    DEFAULT_WITHIN_SECONDS,
    install_automations,
    zombie_automation,
)
from luma_prefect.fleet._serve import build_deployments, serve_deployments
from luma_prefect.fleet._throttle import (
    DEFAULT_RELAY_LIMIT,
    relay_gate,
    relay_limit_name,
    relay_tags,
)

__all__ = [
    "AUTOMATION_NAME",
    "DEFAULT_RELAY_LIMIT",
    "DEFAULT_WITHIN_SECONDS",
    "build_deployments",
    "install_automations",
    "relay_gate",
    "relay_limit_name",
    "relay_tags",
    "serve_deployments",
    "zombie_automation",
]
