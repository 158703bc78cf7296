"""Three engine nodes, 20 tenants and 10,000 runs of a mixed workload (bench/cluster_chaos.py)
while one node is killed with kill -9, then another, then both come back: every acknowledged run
finishes as its definition says, no concurrency key runs more than 2 attempts at once, no cron
tick fires twice or is missed, and the client sees no error the SDK did not retry by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import report
from bench.cluster_chaos import ClusterChaosSettings, run_cluster_chaos, table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


async def test_two_nodes_killed_and_restarted_break_no_promise(tmp_path: Path) -> None:
    verdict = await run_cluster_chaos(ClusterChaosSettings(seconds=45, drain_timeout=120), tmp_path)
    print("\n".join(f"{name}: {value}" for name, value in table(verdict)))
    kills = verdict.figures["kills"]
    assert len(kills) == 2, kills
    assert all(kill["tenants"] > 0 for kill in kills), kills
    assert all(kill["leases_moved"] < 10 for kill in kills), kills
    assert verdict.figures["runs acknowledged"] == 10_000
    assert verdict.total_violations == 0, report(verdict)
    assert verdict.figures["runs finished"] == verdict.figures["runs acknowledged"]
    assert verdict.figures["cron ticks fired"] > 20 * 30
