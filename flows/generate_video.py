"""Deployment entrypoint `flows/generate_video.py:generate_video`.

One prompt in, a published video out.

Thin on purpose: the flow lives in `luma_prefect.flows`, so deployments and library users
run the same code.
"""

from luma_prefect.flows import generate_video

__all__ = ["generate_video"]
