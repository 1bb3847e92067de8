"""Relay-supplied strings cannot inject markup into the markdown artifact (issue #11.9)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pytest

from luma_prefect import Generation, GenerationState
from luma_prefect._models import ImageAsset
from luma_prefect._outcomes import DownloadedAsset, DownloadedGeneration
from luma_prefect.delivery import _publish

GID = "4665a07c-7641-4809-a133-10786201bb56"
HOSTILE_PROMPT = 'fox\n# Pwned\n<img src=x onerror="alert(1)"> [click](javascript:alert(2)) **!**'
HOSTILE_THUMB = "https://cdn.example/t.jpg)<script>alert(3)</script>![x](https://evil.example/p"


async def test_a_hostile_prompt_and_thumbnail_link_are_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: dict[str, Any] = {}

    async def capture(**kwargs: Any) -> None:
        written.update(kwargs)

    monkeypatch.setattr(_publish, "acreate_markdown_artifact", capture)
    generation = Generation(
        id=GID,
        state=GenerationState.COMPLETED,
        prompt=HOSTILE_PROMPT,
        thumbnail=ImageAsset(url=HOSTILE_THUMB),
    )
    asset = DownloadedAsset(
        name="video",
        path=f"/out/{GID}/video.mp4",
        file_name="video.mp4",
        bytes=10,
        sha256="ab" * 32,
        source_kind="url",
        source_url="https://cdn.example/v.mp4",
    )
    downloaded = DownloadedGeneration(
        generation=generation,
        destination="/out",
        folder=f"/out/{GID}",
        assets={"video": asset},
        downloaded_at=datetime.now(timezone.utc),
    )

    await _publish.create_summary_artifact(downloaded, f"/out/{GID}/manifest.json", "k")

    markdown = written["markdown"]
    # No raw HTML: every "<" the relay sent is escaped (or percent-encoded in a link).
    assert not re.search(r"(?<!\\)<", markdown)
    assert "\n# Pwned" not in markdown and "](javascript:" not in markdown
    # The link cannot close its parentheses early: one image, its target percent-encoded.
    assert markdown.count("![") == 1
    assert "%29%3Cscript%3E" in markdown
    # The prompt is still readable, only escaped.
    assert "fox \\# Pwned" in markdown
