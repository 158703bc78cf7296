"""Taskyard engine: durable task queue and workflow orchestrator on PostgreSQL."""

__version__ = "0.1.0"
