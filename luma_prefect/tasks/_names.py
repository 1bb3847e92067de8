"""How runs read in the Prefect UI: short run names, and the tags of every run.

Task runs are named `wait 4665a07c`, `download 4665a07c` (the id's first 8 characters fit
the log view, where full uuids were cut off); flow runs after what they make (the prompt's
first words, the ids). Every task run carries the tag `luma`, and inside the flows also
`luma-relay:<host[:port]>`, so tag-based concurrency limits work per relay:
`prefect concurrency-limit create luma-relay:yunwu.ai 4`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "RUN_TAG",
    "relay_tag",
    "relay_tags",
    "run_tags",
    "short_id",
]

RUN_TAG = "luma"
# Short enough for the log view's name column, long enough to tell ids apart.
_ID_CHARS = 8
_NAME_WORDS = 6
_NAME_CHARS = 48


def short_id(generation_id: object) -> str:
    """The first 8 characters of a generation id, for names people read."""
    return str(generation_id or "?").strip()[:_ID_CHARS] or "?"


def relay_tag(base_url: str) -> str:
    """The relay's tag: `luma-relay:<host>` (with `:<port>` when the URL has one).

    Host and port only, never credentials, path or query: every block for one relay
    shares the tag (and a tag-based concurrency limit).
    """
    parts = urlsplit(str(base_url).strip())
    host = (parts.hostname or "").lower() or "unknown"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"luma-relay:{host}:{port}" if port else f"luma-relay:{host}"


def relay_tags(base_url: str) -> list[str]:
    """The tags of runs that talk to a relay: `luma` and the relay's tag."""
    return [RUN_TAG, relay_tag(base_url)]


@contextlib.contextmanager
def run_tags(base_url: str) -> Iterator[None]:
    """Tag every task and subflow run started inside with `luma` and the relay's tag."""
    from prefect import tags

    with tags(*relay_tags(base_url)):
        yield


def first_words(text: str | None, words: int = _NAME_WORDS, chars: int = _NAME_CHARS) -> str:
    """The first words of a prompt, on one line, cut with an ellipsis."""
    flat = " ".join(str(text or "").split())
    cut = " ".join(flat.split(" ")[:words])
    if len(cut) > chars:
        cut = cut[: chars - 1].rstrip()
    return cut + ("…" if cut != flat else "")


def _task_parameters() -> Mapping[str, Any]:
    from prefect.runtime import task_run

    return task_run.parameters or {}


def _flow_parameters() -> Mapping[str, Any]:
    from prefect.runtime import flow_run

    return flow_run.parameters or {}


def _unquoted(value: Any) -> Any:
    """A parameter as given, whether or not the caller passed it `quote`d (a run's name is
    built before Prefect unwraps its parameters)."""
    from prefect.utilities.annotations import BaseAnnotation

    return value.unwrap() if isinstance(value, BaseAnnotation) else value


def _id_of(value: Any) -> str:
    """A generation id from a Generation, a DownloadedGeneration, a dict or a string (or
    one of these quoted: `prefect.utilities.annotations.quote`)."""
    value = _unquoted(value)
    for attr in ("generation", "id"):
        inner = value.get(attr) if isinstance(value, Mapping) else getattr(value, attr, None)
        if inner is not None and inner is not value:
            return _id_of(inner) if attr == "generation" else str(inner)
    return str(value)


def _named(
    build: Callable[[Mapping[str, Any]], str],
    fallback: str,
    parameters: Callable[[], Mapping[str, Any]],
) -> Callable[[], str]:
    """A run-name callable that never fails the run it names."""

    def name() -> str:
        try:
            return build(parameters())
        except Exception:
            return fallback

    name.__name__ = f"{fallback.replace(' ', '_')}_run_name"
    return name


def _task(build: Callable[[Mapping[str, Any]], str], fallback: str) -> Callable[[], str]:
    return _named(build, fallback, _task_parameters)


def _flow(build: Callable[[Mapping[str, Any]], str], fallback: str) -> Callable[[], str]:
    return _named(build, fallback, _flow_parameters)


def _ids_name(verb: str, ids: Any) -> str:
    ids = list(ids or [])
    if len(ids) == 1:
        return f"{verb} {short_id(ids[0])}"
    return f"{verb} {len(ids)} generations"


# -- task runs ----------------------------------------------------------------------------

wait_name = _task(lambda p: f"wait {short_id(p['generation_id'])}", "wait")
wait_many_name = _task(lambda p: _ids_name("wait", p["generation_ids"]), "wait")
follow_name = _task(
    lambda p: f"wait {p['expected']} generation" + ("" if p["expected"] == 1 else "s"), "wait"
)
fetch_name = _task(lambda p: f"fetch {short_id(p['generation_id'])}", "fetch")
fetch_many_name = _task(lambda p: _ids_name("fetch", p["generation_ids"]), "fetch")
extend_name = _task(lambda p: f"extend {short_id(p['generation_id'])}", "extend")
download_name = _task(lambda p: f"download {short_id(_id_of(p['generation']))}", "download")
publish_name = _task(lambda p: f"publish {short_id(_id_of(p['downloaded']))}", "publish")
deliver_name = _task(lambda p: f"deliver {short_id(_id_of(p['generation']))}", "deliver")


def _submit(parameters: Mapping[str, Any]) -> str:
    request = _unquoted(parameters["request"])
    prompt = request.get("prompt") if isinstance(request, Mapping) else request.prompt
    return f"submit {first_words(prompt, 4, 32)}" if prompt else "submit (image)"


submit_name = _task(_submit, "submit")


# -- flow runs ----------------------------------------------------------------------------


def _video(parameters: Mapping[str, Any]) -> str:
    prompt = first_words(parameters.get("prompt"))
    return prompt or "video from an image"


def _videos(parameters: Mapping[str, Any]) -> str:
    requests = list(parameters.get("requests") or [])
    prompts = [
        r.get("prompt") if isinstance(r, Mapping) else getattr(r, "prompt", None) for r in requests
    ]
    first = next((first_words(p, 4, 32) for p in prompts if p), "")
    noun = "video" if len(requests) == 1 else "videos"
    return f"{len(requests)} {noun}" + (f": {first}" if first else "")


def _collect(parameters: Mapping[str, Any]) -> str:
    return _ids_name("collect", parameters.get("generation_ids"))


def _sweep(parameters: Mapping[str, Any]) -> str:
    destination = parameters.get("destination")
    label = destination if isinstance(destination, str) else getattr(destination, "basepath", "")
    tail = re.split(r"[\\/]", str(label or "").rstrip("/\\"))[-1]
    return f"sweep {tail}" if tail else "sweep"


video_run_name = _flow(_video, "generate video")
videos_run_name = _flow(_videos, "generate videos")
collect_run_name = _flow(_collect, "collect")
sweep_run_name = _flow(_sweep, "sweep")
