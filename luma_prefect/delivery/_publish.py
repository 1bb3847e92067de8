"""Publishing a downloaded generation: its manifest, Prefect artifacts and Prefect events."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.events import emit_event

from luma_prefect._models import Generation, GenerationRequest
from luma_prefect._outcomes import DownloadedGeneration
from luma_prefect._urls import public_url
from luma_prefect.storage import Storage

__all__ = [
    "EVENT_COMPLETED",
    "EVENT_FAILED",
    "EVENT_PUBLISHED",
    "artifact_key",
    "build_manifest",
    "create_batch_table",
    "create_summary_artifact",
    "emit_generation_event",
    "mismatched_files",
]

EVENT_COMPLETED = "luma.generation.completed"
EVENT_FAILED = "luma.generation.failed"
EVENT_PUBLISHED = "luma.generation.published"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())
    return re.sub(r"-{2,}", "-", key).strip("-")[:100] or "luma"


def build_manifest(
    downloaded: DownloadedGeneration,
    *,
    request: GenerationRequest | None = None,
    timeline: Mapping[str, datetime | None] | None = None,
    published_at: datetime | None = None,
) -> dict[str, Any]:
    """The manifest written beside the files: what was asked, what came back, and where."""
    generation = downloaded.generation
    relay_request = generation.raw.get("request")
    times: dict[str, datetime | None] = {
        "created": generation.created_at,
        **(timeline or {}),
        "downloaded": downloaded.downloaded_at,
        "published": published_at or datetime.now(timezone.utc),
    }
    return {
        "manifest_version": MANIFEST_VERSION,
        "generation_id": generation.id,
        "prompt": generation.prompt or (request.prompt if request else None),
        "request": request.model_dump(mode="json", exclude_none=True) if request else None,
        "relay_request": relay_request if isinstance(relay_request, dict) else None,
        "state": generation.state.value,
        "raw_state": generation.raw_state,
        "failure_reason": generation.failure_reason,
        "states": [{"state": name, "at": when.isoformat()} for name, when in times.items() if when],
        "assets": {
            name: {
                "file": asset.file_name,
                "path": asset.path,
                "bytes": asset.bytes,
                "sha256": asset.sha256,
                "content_type": asset.content_type,
                "width": asset.width,
                "height": asset.height,
                "duration": asset.duration,
                "source_kind": asset.source_kind,
                "source_url": public_url(asset.source_url),
            }
            for name, asset in downloaded.assets.items()
        },
        "relay": {
            "base_url": public_url(downloaded.relay_base_url)
            if downloaded.relay_base_url
            else None,
            "style": downloaded.relay_style,
        },
    }


def mismatched_files(storage: Storage, downloaded: DownloadedGeneration) -> list[str]:
    """The assets whose stored file is not the one described (size, then sha256).

    Checked before a generation is marked published: a file replaced since its download
    (another holder's late write) must never stand under a manifest it does not match.

    Example:
        ```python
        assert mismatched_files(storage, downloaded) == []
        ```
    """
    folder = downloaded.generation.id
    bad = []
    for name, asset in downloaded.assets.items():
        relpath = f"{folder}/{asset.file_name}"
        if storage.size(relpath) != asset.bytes or storage.sha256(relpath) != asset.sha256:
            bad.append(name)
    return bad


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as pretty, stable UTF-8 JSON."""
    return (json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n").encode()


async def create_summary_artifact(
    downloaded: DownloadedGeneration, manifest_uri: str, key: str
) -> None:
    """A markdown artifact: prompt, thumbnail, links to the files, timings."""
    generation = downloaded.generation
    # Every string that came from the relay (prompt, links, kinds) is escaped or
    # percent-encoded: a hostile relay must not inject markup into the artifact.
    lines = [f"# Luma generation {_md(generation.id)}", ""]
    if generation.prompt:
        lines += [f"> {_md(generation.prompt)}", ""]
    thumbnail = downloaded.assets.get("thumbnail")
    # The relay's own link, without its signature: signed links must not reach artifacts.
    preview = (
        _md_url(public_url(generation.thumbnail.url))
        if generation.thumbnail and generation.thumbnail.url
        else None
    )
    if preview:
        lines += [f"![thumbnail]({preview})", ""]
    lines += ["| file | bytes | sha256 | source |", "|---|---:|---|---|"]
    for name, asset in downloaded.assets.items():
        lines.append(
            f"| [{_md(name)}]({_md_url(asset.path)}) | {asset.bytes:,} "
            f"| {_md(asset.sha256[:16])}… | {_md(asset.source_kind)} |"
        )
    lines += ["", f"Manifest: [{_md(manifest_uri)}]({_md_url(manifest_uri)})"]
    if generation.created_at and downloaded.downloaded_at:
        took = (downloaded.downloaded_at - generation.created_at).total_seconds()
        lines.append(f"From creation to files on disk: {took:.1f} s.")
    if thumbnail is None and not preview:
        lines.append("No thumbnail was available.")
    await acreate_markdown_artifact(
        markdown="\n".join(lines),
        key=key,
        description=f"Luma generation {generation.id}",
    )


async def create_batch_table(rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """A table artifact with one row per generation of a batch."""
    await acreate_table_artifact(
        table=[dict(row) for row in rows],
        key=key,
        description=f"{len(rows)} Luma generation(s)",
    )


def emit_generation_event(
    event: str, generation: Generation, payload: Mapping[str, Any] | None = None
) -> None:
    """Emit a Prefect event about a generation, resource `luma.generation.<id>`.

    Automations can match it to start downstream deployments.
    """
    resource = {
        "prefect.resource.id": f"luma.generation.{generation.id}",
        "prefect.resource.name": (generation.prompt or generation.id)[:120],
        "luma.state": generation.state.value,
    }
    emit_event(
        event=event,
        resource=resource,
        payload={
            "generation_id": generation.id,
            "state": generation.state.value,
            "failure_reason": generation.failure_reason,
            **(payload or {}),
        },
    )


def _md(text: str) -> str:
    """Plain text for markdown: every ASCII punctuation backslash-escaped (CommonMark
    allows it for all of them), line breaks and other control characters made spaces."""
    flat = re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", flat)


def _md_url(url: str) -> str:
    """A link target that cannot break out of `(...)`: percent-encoded, and only http(s),
    file or local paths (no `javascript:` nor `data:`); anything else becomes `#`."""
    scheme = urlsplit(url).scheme.lower()
    # "" is a local path; one letter is a Windows drive (C:\\out\\...).
    if scheme not in ("http", "https", "file", "") and len(scheme) != 1:
        return "#"
    return quote(url, safe=":/@%-._~+=,;&?#")
