"""examples/grafana: the dashboard asks only for metrics the engine serves, and the compose
profile wires Prometheus to the engine with the scrape token the engine is given."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import yaml

from taskyard.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "examples" / "grafana"


async def served_names(engine: Engine) -> set[str]:
    """Every series name /metrics can serve, from the exposition's TYPE lines (families with
    no samples yet included): a counter's line names it with _total, a histogram's its base."""
    async with aiohttp.ClientSession() as http, http.get(f"{engine.url}/metrics") as response:
        text = await response.text()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        suffixes = {"histogram": ["_bucket", "_count", "_sum"]}
        names.update(name + suffix for suffix in suffixes.get(kind, [""]))
    return names


async def test_the_dashboard_asks_only_for_served_metrics(engine: Engine) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "taskyard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:taskyard|process)_[a-z_]+)", target["expr"])
    }
    assert len(asked) >= 20
    assert asked - await served_names(engine) == set()
    assert all(
        t["datasource"]["uid"] == "prometheus" for p in dashboard["panels"] for t in p["targets"]
    )


def test_the_compose_profile_scrapes_the_engine_with_its_token() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["engine:7077"]
    assert (
        job["authorization"]["credentials"]
        == (services["engine"]["environment"]["TASKYARD_METRICS_TOKEN"])
    )
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), volume
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["uid"] == "prometheus"
