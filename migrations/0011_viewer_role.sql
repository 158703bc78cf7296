-- A read-only role: viewer tokens read everything of their tenant and change nothing.
-- NOT VALID then VALIDATE: the new check is proven on existing rows without blocking writers.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('admin', 'client', 'worker', 'viewer')) NOT VALID;
ALTER TABLE api_tokens VALIDATE CONSTRAINT api_tokens_role_check;
