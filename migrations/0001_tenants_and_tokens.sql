-- Tenants and their API tokens. Every table is keyed by tenant_id first (DESIGN.md section 2).

CREATE TABLE tenants (
    tenant_id   uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name <> ''),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    tenant_id   uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    token_id    uuid NOT NULL,
    name        text NOT NULL DEFAULT '',
    role        text NOT NULL CHECK (role IN ('admin', 'client', 'worker')),
    token_hash  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, token_id)
);

-- Authentication looks tokens up by hash; revocation by id (the CLI does not know the tenant).
CREATE UNIQUE INDEX api_tokens_hash ON api_tokens (token_hash);
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (token_id);
