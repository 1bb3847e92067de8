"""deployments/: every way to deploy resolves its flows in the installed package, no paths.

Docker cannot run here: the Docker variant is checked for consistency only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

REPO = Path(__file__).resolve().parents[2]
PROCESS = REPO / "deployments" / "prefect.yaml"
DOCKER = REPO / "deployments" / "docker" / "prefect.yaml"
DOCKERFILE = REPO / "deployments" / "docker" / "Dockerfile"
NAMES = ["generate-video", "generate-videos", "collect-generations", "collect-pending"]


def _load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", [PROCESS, DOCKER], ids=["process", "docker"])
def test_entrypoints_are_flows_of_the_package_and_nothing_is_pulled(path: Path) -> None:
    spec = _load(path)
    assert spec["pull"] == []  # no checkout, no working directory
    assert "LUMA_PREFECT_ROOT" not in path.read_text()
    assert [d["name"] for d in spec["deployments"]] == NAMES
    for deployment in spec["deployments"]:
        entrypoint = deployment["entrypoint"]
        assert entrypoint.startswith("luma_prefect.") and ".py" not in entrypoint
        flow = load_flow_from_entrypoint(entrypoint)
        assert flow.name == deployment["name"]
        assert "luma" in deployment["tags"]


def test_the_docker_variant_builds_the_image_it_deploys() -> None:
    spec = _load(DOCKER)
    (build,) = spec["build"]
    (push,) = spec["push"]
    build_step = build["prefect_docker.deployments.steps.build_docker_image"]
    push_step = push["prefect_docker.deployments.steps.push_docker_image"]
    assert (REPO / build_step["dockerfile"]).resolve() == DOCKERFILE
    assert push_step["image_name"] == "{{ build-image.image_name }}"
    pool = spec["deployments"][0]["work_pool"]
    assert pool["job_variables"]["image"] == "{{ build-image.image }}"
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM prefecthq/prefect:(\S+)-python3\.\d+$", text, re.MULTILINE)
    assert base == spec["prefect-version"] == _load(PROCESS)["prefect-version"]
    for copied in re.findall(r"^COPY (.+) \./?\S*$", text, re.MULTILINE):
        for name in copied.split():
            assert (REPO / name).exists(), name  # the build context is the repository root
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30" in text
