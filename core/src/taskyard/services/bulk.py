"""Cancelling or replaying many runs at once, named by id or matched by a filter, with exactly
the rules of one at a time (a finished run is not cancelled, an unfinished one or a workflow's
step is not replayed): those the rules refuse are skipped and counted, with their reasons. Runs
are changed a hundred at a time (cancelled with one read of the hundred and one of their
children), their writes sharing the persister's commits; a filter changes at most MAX_BULK runs
a call and says when more matched."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from taskyard.errors import ApiError
from taskyard.services.history import History
from taskyard.services.runs import Runs, no_such_run, refusals
from taskyard_sdk.models import BulkResult, BulkSkip, RunFilter, RunStatus
from taskyard_sdk.models.runs import MAX_BULK

AT_ONCE = 100  # runs changed concurrently
PAGE = 1000  # runs read at a time from a filter
REASONS = 100  # skipped runs whose reason is answered

# Runs of a tenant changed together: for each, why it was not (None: it was).
Change = Callable[[uuid.UUID, list[uuid.UUID]], Awaitable[dict[uuid.UUID, ApiError | None]]]


class Bulk:
    def __init__(self, runs: Runs, history: History) -> None:
        self.runs = runs
        self.history = history

    async def cancel(
        self,
        tenant_id: uuid.UUID,
        run_ids: list[uuid.UUID] | None = None,
        matching: RunFilter | None = None,
    ) -> BulkResult:
        """Cancel the runs named, or the unfinished runs the filter matches."""
        unfinished = [status for status in RunStatus if not status.terminal]
        return await self._apply(tenant_id, run_ids, matching, unfinished, self.runs.cancel_many)

    async def replay(
        self,
        tenant_id: uuid.UUID,
        run_ids: list[uuid.UUID] | None = None,
        matching: RunFilter | None = None,
    ) -> BulkResult:
        """Replay the runs named, or the finished runs the filter matches."""
        finished = [status for status in RunStatus if status.terminal]
        return await self._apply(tenant_id, run_ids, matching, finished, self._replay)

    async def _replay(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, ApiError | None]:
        return await refusals(run_ids, (self.runs.replay(tenant_id, r) for r in run_ids))

    async def _apply(
        self,
        tenant_id: uuid.UUID,
        run_ids: list[uuid.UUID] | None,
        matching: RunFilter | None,
        eligible: list[RunStatus],
        change: Change,
    ) -> BulkResult:
        more = False
        if run_ids is None:
            run_ids, more = await self._matching(tenant_id, matching or RunFilter(), eligible)
        ids = list(dict.fromkeys(run_ids))  # each run once, in the order given
        # Ids of no run of the tenant's are answered at once, with one query for them all.
        known = await self.history.run_statuses(tenant_id, ids)
        skipped = [
            BulkSkip(run_id=run_id, reason=str(no_such_run(run_id)))
            for run_id in ids
            if run_id not in known
        ]
        changed = 0
        existing = [run_id for run_id in ids if run_id in known]
        for start in range(0, len(existing), AT_ONCE):
            for run_id, refused in (
                await change(tenant_id, existing[start : start + AT_ONCE])
            ).items():
                if refused is None:
                    changed += 1
                else:
                    skipped.append(BulkSkip(run_id=run_id, reason=str(refused)))
        return BulkResult(
            matched=len(ids),
            changed=changed,
            skipped=len(skipped),
            reasons=skipped[:REASONS],
            more=more,
        )

    async def _matching(
        self, tenant_id: uuid.UUID, matching: RunFilter, eligible: list[RunStatus]
    ) -> tuple[list[uuid.UUID], bool]:
        """The ids of up to MAX_BULK runs the filter matches in an eligible status, newest
        first, and whether there are more."""
        statuses = [s for s in eligible if not matching.status or s in matching.status]
        if not statuses:
            return [], False
        found: list[uuid.UUID] = []
        before: uuid.UUID | None = None
        while len(found) <= MAX_BULK:
            rows = await self.history.list_runs(
                tenant_id,
                matching.model_copy(update={"status": statuses}),
                before=before,
                limit=PAGE,
            )
            found += [row["run_id"] for row in rows]
            if len(rows) < PAGE:
                break
            before = rows[-1]["run_id"]
        return found[:MAX_BULK], len(found) > MAX_BULK
