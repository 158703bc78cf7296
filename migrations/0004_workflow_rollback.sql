-- Registering an older definition again (a rolled-back deploy) makes it the next version, so the
-- latest version is always what was registered last; only the latest version's digest is compared.
ALTER TABLE workflows DROP CONSTRAINT workflows_tenant_id_name_digest_key;
