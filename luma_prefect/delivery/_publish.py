"""Publishing a downloaded generation: its manifest, Prefect artifacts and Prefect events."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.events import emit_event

from luma_prefect._models import Generation, GenerationRequest
from luma_prefect._outcomes import DownloadedGeneration, GenerationOutcome
from luma_prefect._urls import public_url
from luma_prefect.storage import Storage

__all__ = [
    "EVENT_FAILED",
    "EVENT_PUBLISHED",
    "artifact_key",
    "build_manifest",
    "create_batch_table",
    "create_failure_artifact",
    "create_summary_artifact",
    "emit_generation_event",
    "mismatched_files",
    "report_failures",
    "summary_artifact_key",
    "thumbnail_data_url",
]

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


# Thumbnails up to this size are inlined in the artifact as a data: URL (about 4/3 larger
# as base64): the artifact then shows the image as long as Prefect keeps the artifact,
# long after the relay's signed link expired (within the hour). Luma's thumbnails are
# JPEGs of some 20-150 KB; a larger one is named, not shown.
INLINE_THUMBNAIL_BYTES = 256 * 1024
# Raster formats the browsers show in <img>, by their first bytes (never SVG: it can script).
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def summary_artifact_key() -> str:
    """The key of the generation artifacts of this flow and deployment.

    One key per flow and deployment (`luma-generate-video`, `luma-generate-video-nightly`)
    keeps the artifact catalog short: each generation is a new version of it, named in
    its description. Outside a flow run: `luma-generation`.
    """
    from prefect.runtime import deployment, flow_run

    flow_name = flow_run.flow_name or ""
    deployment_name = deployment.name or ""
    if not flow_name:
        return "luma-generation"
    parts = ["luma", flow_name]
    if deployment_name and artifact_key(deployment_name) != artifact_key(flow_name):
        parts.append(deployment_name)
    return artifact_key(*parts)


def thumbnail_data_url(data: bytes) -> str | None:
    """`data:image/...;base64,...` for a JPEG, PNG, GIF or WebP image; None otherwise."""
    kind = next((k for magic, k in _IMAGE_MAGIC if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "image/webp"
    if kind is None:
        return None
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail(downloaded: DownloadedGeneration, storage: Storage | None) -> tuple[str, str]:
    """(markdown image or "", a note): our own copy of the thumbnail, never the relay's link."""
    asset = downloaded.assets.get("thumbnail")
    if asset is None:
        return "", "No thumbnail was downloaded."
    if _is_web_url(asset.path):
        # The destination serves its files over http(s): a link that lasts as long as they do.
        return f"![thumbnail]({_md_url(asset.path)})", ""
    if storage is None or asset.bytes > INLINE_THUMBNAIL_BYTES:
        return "", (
            f"The thumbnail ({asset.bytes:,} bytes) is too large to show here; "
            f"it is at {_code(asset.path)}."
        )
    try:
        data = storage.read_bytes(f"{downloaded.generation.id}/{asset.file_name}")
    except (OSError, ValueError):
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != asset.sha256:
        return "", f"The thumbnail could not be read back; it is at {_code(asset.path)}."
    url = thumbnail_data_url(data)
    if url is None:
        return "", f"The thumbnail is not an image a browser shows; it is at {_code(asset.path)}."
    # Base64 has no character that can end the link: nothing from the relay is in it.
    return f"![thumbnail]({url})", ""


def _where(path: str) -> str:
    """A file's place for people: a link when the browser can open it, else plain text."""
    if _is_web_url(path):
        return f"[{_md(path)}]({_md_url(path)})"
    return _code(path)


def _code(text: str) -> str:
    """`text` as a code span, whatever backticks it holds; `|` escaped for table cells."""
    flat = re.sub(r"[\x00-\x1f\x7f]+", " ", text).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


async def create_summary_artifact(
    downloaded: DownloadedGeneration,
    manifest_uri: str,
    key: str,
    storage: Storage | None = None,
) -> None:
    """A markdown artifact: prompt, thumbnail (our copy, inlined), the files, timings.

    `storage` (the destination) lets the thumbnail be read back and inlined; without it, or
    when it is large, the artifact names the file instead. Never the relay's link: signed
    links expire within the hour and would leave a broken image.
    """
    generation = downloaded.generation
    # Every string that came from the relay (prompt, links, kinds) is escaped or
    # percent-encoded: a hostile relay must not inject markup into the artifact.
    lines = [f"# Luma generation {_md(generation.id)}", ""]
    if generation.prompt:
        lines += [f"> {_md(generation.prompt)}", ""]
    image, note = await asyncio.to_thread(_thumbnail, downloaded, storage)  # reads it back
    if image:
        lines += [image, ""]
    lines += ["| file | where | bytes | sha256 |", "|---|---|---:|---|"]
    for name, asset in downloaded.assets.items():
        lines.append(
            f"| {_md(name)} | {_where(asset.path)} | {asset.bytes:,} | {_md(asset.sha256[:16])}… |"
        )
    lines += ["", f"Manifest: {_where(manifest_uri)}", ""]
    if generation.created_at and downloaded.downloaded_at:
        took = (downloaded.downloaded_at - generation.created_at).total_seconds()
        lines.append(f"From creation to files in the destination: {took:.1f} s.")
    if note:
        lines.append(note)
    prompt = f": {_md(_first_words(generation.prompt))}" if generation.prompt else ""
    await acreate_markdown_artifact(
        markdown="\n".join(lines),
        key=key,
        description=f"Luma generation {generation.id}{prompt}",
    )


# What a user does next, per way a generation can end unpublished. Never a new run of
# the same request while the generation may exist: that pays again.
_NEXT_STEP: dict[str, str] = {
    "failed": (
        "The relay ended this generation as failed (relays refund failed generations); "
        "there is nothing to collect. To try again, change what made it fail (often the "
        "prompt or the image) and start a new run: that is a new generation, paid once."
    ),
    "timed_out": (
        "The generation is still on the relay and already paid for: do not start this run "
        "again (that would pay again). The `collect-pending` deployment publishes it once "
        "the relay completes it, or run `luma-prefect collect {generation_id}` with this "
        "run's destination."
    ),
    "not_found": (
        "The relay does not know this id: check that the credentials block points at the "
        "relay (base URL and API style) that made it. Nothing was downloaded."
    ),
    "error_with_id": (
        "The generation is recorded in the destination's ledger and not lost: the "
        "`collect-pending` deployment tries again, or run `luma-prefect collect "
        "{generation_id}` with this run's destination. Do not start this run again (that "
        "would pay again)."
    ),
    "error": (
        "The message above says whether the relay received the request. When it may "
        "have, never submit it again: `luma-prefect resolve` lists the submits in doubt."
    ),
}


async def create_failure_artifact(outcome: GenerationOutcome, key: str) -> None:
    """A markdown artifact for a generation that ended unpublished: why, and what next."""
    generation = outcome.generation
    shown_id = outcome.generation_id or "(no id: the submit did not return one)"
    lines = [f"# Luma generation {_md(shown_id)}: {_md(outcome.status.replace('_', ' '))}", ""]
    if generation is not None and generation.prompt:
        lines += [f"> {_md(generation.prompt)}", ""]
    if generation is not None:
        state = generation.raw_state or generation.state.value
        lines.append(f"Last state seen on the relay: {_md(state)}.")
    if generation is not None and generation.failure_reason:
        lines.append(f"The relay's reason: {_md(generation.failure_reason)}")
    happened = outcome.error or "it was not published."
    if outcome.status == "failed":  # the error's own advice is the next step's, below
        happened = "the relay ended the generation as failed."
    lines += ["", "**What happened:** " + _md(happened), ""]
    step: str = outcome.status
    if step == "error" and outcome.generation_id:
        step = "error_with_id"
    advice = _NEXT_STEP.get(step, _NEXT_STEP["error"])
    lines.append("**What to do next:** " + advice.format(generation_id=outcome.generation_id))
    await acreate_markdown_artifact(
        markdown="\n".join(lines),
        key=key,
        description=f"Luma generation {outcome.generation_id or '(not submitted)'}: "
        f"{outcome.status.replace('_', ' ')}",
    )


async def report_failures(outcomes: Sequence[GenerationOutcome]) -> None:
    """A failure artifact (under this flow's key) for each outcome that is not published."""
    key = summary_artifact_key()
    for outcome in outcomes:
        if outcome.ok:
            continue
        try:
            await create_failure_artifact(outcome, key)
        except Exception as exc:  # the report must never undo what the run delivered
            logging.getLogger("luma_prefect.publish").warning(
                "Could not create the failure artifact of %s: %r", outcome.generation_id, exc
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


def _is_web_url(path: str) -> bool:
    return urlsplit(path).scheme.lower() in ("http", "https")


def _first_words(text: str | None, words: int = 8) -> str:
    flat = " ".join(str(text or "").split())
    cut = " ".join(flat.split(" ")[:words])
    return cut + ("…" if cut != flat else "")


def _md_url(url: str) -> str:
    """A link target that cannot break out of `(...)`: percent-encoded, and only http(s),
    file or local paths (no `javascript:` nor `data:`); anything else becomes `#`."""
    scheme = urlsplit(url).scheme.lower()
    # "" is a local path; one letter is a Windows drive (C:\\out\\...).
    if scheme not in ("http", "https", "file", "") and len(scheme) != 1:
        return "#"
    return quote(url, safe=":/@%-._~+=,;&?#")
