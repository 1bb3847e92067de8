"""Deployment entrypoint `flows/collect_pending.py:collect_pending`.

Sweeps the ledger, finishes what a dead run left.

Thin on purpose: the flow lives in `luma_prefect.flows`, so deployments and library users
run the same code.
"""

from luma_prefect.flows import collect_pending

__all__ = ["collect_pending"]
