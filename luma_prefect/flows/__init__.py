"""Flows that chain it all: submit (or take ids), wait, download, publish.

Example:
    ```python
    from luma_prefect.flows import generate_video

    published = await generate_video(prompt="a red fox in the snow", credentials="luma-relay")
    ```
"""

from luma_prefect.flows._flows import (
    collect_generations,
    collect_pending,
    generate_video,
    generate_videos,
)

__all__ = ["collect_generations", "collect_pending", "generate_video", "generate_videos"]
