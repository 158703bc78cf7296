-- Workflow runs with concurrency keys wait, queued, until admitted; recovery loads them too.
CREATE INDEX runs_queued_workflows ON runs (tenant_id, run_id)
    WHERE kind = 'workflow' AND status = 'queued';
