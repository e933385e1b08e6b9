-- Usage views (GET /v1/tenant/usage, /v1/admin/usage) read jobs by the time they
-- ended, per tenant; without this they scan every job the tenant ever had.
CREATE INDEX jobs_tenant_finished ON jobs (tenant_id, finished_at) WHERE finished_at IS NOT NULL;
