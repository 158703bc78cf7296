"""The short chaos run (bench/chaos.py): a mixed workload on a throwaway cluster while Postgres
restarts and the engine and a worker are killed with kill -9, then every acknowledged run is
accounted for from the ledgers the tasks wrote. `python -m bench chaos` is the long version."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosSettings, report, run_chaos, table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


async def test_a_short_chaos_run_breaks_no_promise(tmp_path: Path) -> None:
    verdict = await run_chaos(ChaosSettings(seconds=30, seed=14, drain_timeout=240), tmp_path)
    print("\n".join(f"{name}: {value}" for name, value in table(verdict)))
    faults = verdict.figures["faults injected"]
    assert any(kind.startswith("postgres") for kind in faults), faults
    assert "engine kill -9" in faults, faults
    assert "worker kill -9" in faults, faults
    assert not verdict.figures["events pushed during outages"].startswith("0 "), verdict.figures
    assert verdict.figures["runs acknowledged"] > 100
    assert verdict.total_violations == 0, report(verdict)
    assert verdict.figures["runs finished"] == verdict.figures["runs acknowledged"]
