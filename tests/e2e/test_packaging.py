"""The container build and the compose file, read as Docker reads them (no daemon needed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_dependencies_install_before_the_code_is_copied() -> None:
    """Otherwise every change to the code reinstalls every dependency."""
    steps = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    joined = "\n".join(steps).replace("\\\n", " ")
    instructions = re.findall(r"^(FROM|RUN|COPY|ENV|WORKDIR|EXPOSE|CMD)\b(.*)$", joined, re.M)
    copy_all = next(
        i
        for i, (kind, rest) in enumerate(instructions)
        if kind == "COPY" and rest.split()[:1] == ["."]
    )
    first_sync = next(
        i for i, (kind, rest) in enumerate(instructions) if kind == "RUN" and "uv sync" in rest
    )
    assert first_sync < copy_all
    assert "--no-install-workspace" in instructions[first_sync][1]


def test_the_compose_engine_loads_the_plugins_declarative_workflows_call() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["engine"]["command"]
    plugins = {command[i + 1] for i, arg in enumerate(command) if arg == "--plugin"}
    assert {"http", "email"} <= plugins


def test_the_compose_cluster_gives_each_node_its_name_and_address() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nodes = [services["engine"], services["engine-b"]]
    names = [node["environment"]["TASKYARD_NODE_NAME"] for node in nodes]
    urls = [node["environment"]["TASKYARD_ADVERTISE_URL"] for node in nodes]
    assert len(set(names)) == len(set(urls)) == 2
    balanced = (ROOT / "examples/cluster/nginx.conf").read_text()
    for url in urls:
        assert url.removeprefix("http://") in balanced
    worker = services["cluster-worker"]["environment"]["TASKYARD_URL"].split(",")
    assert worker == urls
