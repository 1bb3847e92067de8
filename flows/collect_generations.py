"""Deployment entrypoint `flows/collect_generations.py:collect_generations`.

Existing ids, waited for together, then published.

Thin on purpose: the flow lives in `luma_prefect.flows`, so deployments and library users
run the same code.
"""

from luma_prefect.flows import collect_generations

__all__ = ["collect_generations"]
