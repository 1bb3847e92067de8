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
    # The relay's thumbnail link never reaches the artifact (it expires, and it is theirs):
    # only our downloaded copy is shown, and here none was downloaded.
    assert "![" not in markdown and "evil.example" not in markdown and "cdn.example" not in markdown
    # The prompt is still readable, only escaped.
    assert "fox \\# Pwned" in markdown


async def test_a_thumbnail_that_is_not_a_raster_image_is_never_inlined(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import hashlib

    from luma_prefect.storage import storage_for

    written: dict[str, Any] = {}

    async def capture(**kwargs: Any) -> None:
        written.update(kwargs)

    monkeypatch.setattr(_publish, "acreate_markdown_artifact", capture)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    (tmp_path / GID).mkdir()
    (tmp_path / GID / "thumbnail.jpg").write_bytes(svg)
    asset = DownloadedAsset(
        name="thumbnail",
        path=str(tmp_path / GID / "thumbnail.jpg"),
        file_name="thumbnail.jpg",
        bytes=len(svg),
        sha256=hashlib.sha256(svg).hexdigest(),
        content_type="image/jpeg",
        source_kind="thumbnail",
        source_url="https://cdn.example/t.jpg",
    )
    downloaded = DownloadedGeneration(
        generation=Generation(id=GID, state=GenerationState.COMPLETED),
        destination=str(tmp_path),
        folder=str(tmp_path / GID),
        assets={"thumbnail": asset},
    )

    await _publish.create_summary_artifact(
        downloaded, "manifest.json", "k", storage_for(str(tmp_path))
    )

    assert "![" not in written["markdown"] and "data:" not in written["markdown"]
    assert "not an image a browser shows" in written["markdown"]
