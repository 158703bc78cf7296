-- Alert rules: which failures a tenant is alerted about, through which channel, how often.
CREATE TABLE alert_rules (
    tenant_id       uuid NOT NULL,
    rule_id         uuid NOT NULL,
    channel         text NOT NULL,
    target          jsonb NOT NULL DEFAULT '{}',
    workflows       text[],          -- NULL: every workflow (and every task outside workflows)
    tasks           text[],          -- NULL: every task
    events          text[] NOT NULL DEFAULT '{failed}',
    window_seconds  double precision NOT NULL DEFAULT 300,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id)
);
