"""Serve every luma_prefect deployment from one process, without a work pool.

The same as `luma-prefect serve` (which needs no checkout); kept for existing set-ups:

    python deployments/serve.py --credentials luma-relay --destination "$PWD/luma-output"

It registers `generate-video`, `generate-videos` and `collect-generations` (started from the
UI or `prefect deployment run`) and `collect-pending` (every 10 minutes), then runs their
flow runs as they come, each in a child process, until stopped with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os

from luma_prefect.fleet import build_deployments, serve_deployments

__all__ = ["build_deployments", "main"]

DEFAULT_CREDENTIALS = os.environ.get("LUMA_PREFECT_CREDENTIALS_BLOCK", "luma-relay")
DEFAULT_DESTINATION = os.environ.get("LUMA_PREFECT_DESTINATION", "luma-output")


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
    serve_deployments(args.credentials, args.destination, args.sweep_interval)


if __name__ == "__main__":
    main()
