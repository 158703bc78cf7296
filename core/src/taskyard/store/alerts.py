"""Alert rules in Postgres: few, written by the API, read when failures need them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from taskyard.ids import new_id
from taskyard_sdk.models import AlertRuleRequest


@dataclass(frozen=True, slots=True)
class AlertRule:
    tenant_id: uuid.UUID
    rule_id: uuid.UUID
    channel: str
    target: dict[str, Any]
    workflows: list[str] | None
    tasks: list[str] | None
    events: list[str]
    window: float
    created_at: datetime


_COLUMNS = (
    "tenant_id, rule_id, channel, target, workflows, tasks, events, window_seconds, created_at"
)


def _rule(row: asyncpg.Record) -> AlertRule:
    return AlertRule(
        row["tenant_id"],
        row["rule_id"],
        row["channel"],
        row["target"],
        row["workflows"],
        row["tasks"],
        list(row["events"]),
        row["window_seconds"],
        row["created_at"],
    )


def _said(rule: AlertRuleRequest) -> tuple[Any, ...]:
    """What a rule says, in its columns' order after its ids (channel ... window_seconds)."""
    return rule.channel, rule.target, rule.workflows, rule.tasks, rule.events, rule.window


class AlertRuleRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, tenant_id: uuid.UUID, rule: AlertRuleRequest) -> AlertRule:
        row = await self.pool.fetchrow(
            f"INSERT INTO alert_rules ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
            f"now()) RETURNING {_COLUMNS}",
            tenant_id,
            new_id(),
            *_said(rule),
        )
        assert row is not None
        return _rule(row)

    async def replace(
        self, tenant_id: uuid.UUID, rule_id: uuid.UUID, rule: AlertRuleRequest
    ) -> AlertRule | None:
        """The rule, now saying `rule`; None when the tenant has no such rule."""
        row = await self.pool.fetchrow(
            "UPDATE alert_rules SET channel = $3, target = $4, workflows = $5, tasks = $6, "
            f"events = $7, window_seconds = $8 WHERE tenant_id = $1 AND rule_id = $2 "
            f"RETURNING {_COLUMNS}",
            tenant_id,
            rule_id,
            *_said(rule),
        )
        return None if row is None else _rule(row)

    async def of_tenant(self, tenant_id: uuid.UUID) -> list[AlertRule]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM alert_rules WHERE tenant_id = $1 ORDER BY rule_id", tenant_id
        )
        return [_rule(row) for row in rows]

    async def delete(self, tenant_id: uuid.UUID, rule_id: uuid.UUID) -> bool:
        status = await self.pool.execute(
            "DELETE FROM alert_rules WHERE tenant_id = $1 AND rule_id = $2", tenant_id, rule_id
        )
        return bool(status != "DELETE 0")
