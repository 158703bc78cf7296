"""The viewer role reads and never changes: every endpoint that is not a read refuses it."""

from __future__ import annotations

from taskyard.domain.auth import Role
from taskyard.http.app import CORE_ROUTERS

# Reads that take a body (a POST), and the websocket whose calls each check their own roles.
READS_BY_POST = {("POST", "/api/v1/runs/wait")}
CHANNELS = {("GET", "/api/v1/clients/connect")}


def test_a_viewer_may_call_the_reads_and_nothing_else() -> None:
    endpoints = [endpoint for router in CORE_ROUTERS for endpoint in router.endpoints]
    allowed = {
        (endpoint.method, endpoint.path)
        for endpoint in endpoints
        if endpoint.roles is not None and Role.VIEWER in endpoint.roles
    }
    reads = {
        (endpoint.method, endpoint.path)
        for endpoint in endpoints
        if endpoint.method == "GET" and endpoint.roles is not None and Role.CLIENT in endpoint.roles
    }
    assert allowed - CHANNELS == (reads - CHANNELS) | READS_BY_POST
    assert {("GET", "/api/v1/runs"), ("GET", "/api/v1/runs/{run_id}")} <= allowed
    assert not any(method != "GET" for method, _ in allowed - READS_BY_POST)
