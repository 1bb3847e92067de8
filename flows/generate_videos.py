"""Deployment entrypoint `flows/generate_videos.py:generate_videos`.

Many prompts at once, bounded.

Thin on purpose: the flow lives in `luma_prefect.flows`, so deployments and library users
run the same code.
"""

from luma_prefect.flows import generate_videos

__all__ = ["generate_videos"]
