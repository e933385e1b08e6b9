-- tenantry schema. Every tenant-owned row carries tenant_id; every query on such a row
-- filters on it (see shared/src/db/).

-- Plans: default limits and fair-share weight. Per-tenant overrides live on the tenant.
CREATE TABLE plans (
    name                text PRIMARY KEY,
    documents           bigint  NOT NULL CHECK (documents >= 0),
    storage_mb          bigint  NOT NULL CHECK (storage_mb >= 0),
    api_calls_per_hour  bigint  NOT NULL CHECK (api_calls_per_hour >= 0),
    processing_jobs     bigint  NOT NULL CHECK (processing_jobs >= 0),
    vector_collections  bigint  NOT NULL CHECK (vector_collections >= 0),
    weight              integer NOT NULL CHECK (weight BETWEEN 1 AND 1000)
);

INSERT INTO plans VALUES
    ('standard',     1000,    5000,    1000,   10,   5,  1),
    ('pro',         10000,   50000,   10000,   50,  20,  4),
    ('enterprise', 100000,  500000,  100000,  200, 100, 16);

CREATE TABLE tenants (
    id               text PRIMARY KEY,
    name             text NOT NULL,
    email            text NOT NULL,
    status           text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED', 'INACTIVE')),
    plan             text NOT NULL DEFAULT 'standard' REFERENCES plans (name),
    isolation        text NOT NULL DEFAULT 'collection' CHECK (isolation IN ('collection', 'partition')),
    -- {"DOCUMENTS": 10, ...}: overrides of the plan's limits, validated at the edge.
    quota_overrides  jsonb NOT NULL DEFAULT '{}'::jsonb,
    weight_override  integer CHECK (weight_override BETWEEN 1 AND 1000),
    -- TenantConfiguration, validated at the edge; absent keys take defaults.
    config           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_active      timestamptz
);

-- Effective limits: the one place where plan defaults and overrides are combined.
CREATE VIEW tenant_limits AS
SELECT t.id AS tenant_id,
       COALESCE((t.quota_overrides ->> 'DOCUMENTS')::bigint,          p.documents)          AS documents,
       COALESCE((t.quota_overrides ->> 'STORAGE_MB')::bigint,         p.storage_mb)         AS storage_mb,
       COALESCE((t.quota_overrides ->> 'API_CALLS_PER_HOUR')::bigint, p.api_calls_per_hour) AS api_calls_per_hour,
       COALESCE((t.quota_overrides ->> 'PROCESSING_JOBS')::bigint,    p.processing_jobs)    AS processing_jobs,
       COALESCE((t.quota_overrides ->> 'VECTOR_COLLECTIONS')::bigint, p.vector_collections) AS vector_collections,
       COALESCE(t.weight_override, p.weight)                                                  AS weight
FROM tenants t
JOIN plans p ON p.name = t.plan;

-- Usage counters, changed only by conditional UPDATE ... RETURNING (shared/src/quota.rs).
-- Kept apart from `tenants` so the hot row is narrow.
CREATE TABLE tenant_usage (
    tenant_id        text PRIMARY KEY REFERENCES tenants (id),
    documents        bigint NOT NULL DEFAULT 0 CHECK (documents >= 0),
    storage_bytes    bigint NOT NULL DEFAULT 0 CHECK (storage_bytes >= 0),
    processing_jobs  bigint NOT NULL DEFAULT 0 CHECK (processing_jobs >= 0),
    collections      bigint NOT NULL DEFAULT 0 CHECK (collections >= 0)
);

-- API calls per tenant per clock hour, fleet-wide.
CREATE TABLE api_calls (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    hour        timestamptz NOT NULL,
    calls       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour)
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id),
    -- The visible start of the key ("tnry_" + 8 characters), for recognising it in lists.
    prefix        text NOT NULL,
    -- SHA-256 of the whole key; the key itself is never stored.
    hash          bytea NOT NULL UNIQUE,
    name          text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

-- A tenant's vector databases; each counts against VECTOR_COLLECTIONS. The embedding
-- model and dimension are fixed at creation, so vectors of two models never mix.
CREATE TABLE databases (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    model       text NOT NULL,
    dimension   integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE documents (
    id              uuid PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    database        text NOT NULL,
    source_type     text NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- PENDING until ingested; DELETED keeps the row for usage history.
    state           text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'INGESTED', 'FAILED', 'DELETED')),
    text_bytes      bigint NOT NULL,
    -- Bytes held against STORAGE_MB: the estimate until ingested, then the measure.
    reserved_bytes  bigint NOT NULL DEFAULT 0,
    stored_bytes    bigint NOT NULL DEFAULT 0,
    chunks          integer NOT NULL DEFAULT 0,
    -- Whether this document currently holds one unit of DOCUMENTS.
    holds_quota     boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    ingested_at     timestamptz,
    deleted_at      timestamptz,
    FOREIGN KEY (tenant_id, database) REFERENCES databases (tenant_id, name)
);
CREATE INDEX documents_tenant ON documents (tenant_id, created_at);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    document_id      uuid NOT NULL REFERENCES documents (id),
    status           text NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'PROCESSING', 'FINISHED', 'FAILED', 'CANCELLED')),
    -- 0 low, 1 normal, 2 high: orders work within the tenant only.
    priority         smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 2),
    -- NULL while the job waits in the Postgres backlog; set once the broker confirmed it.
    published_at     timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    -- Whether this job holds one PROCESSING_JOBS slot (released when it ends).
    holds_slot       boolean NOT NULL DEFAULT false,
    -- The document's text, kept until the job ends well (for publishing and replay).
    body             text,
    -- Per-job chunking overrides.
    options          jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key  text,
    chunks           integer,
    error_code       text,
    error            text,
    worker_id        text,
    -- Milliseconds per stage: {"chunk": .., "embed": .., "upsert": .., "record": ..}.
    timings          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC, id);
CREATE INDEX jobs_tenant_status ON jobs (tenant_id, status);
-- The backlog, in the order the pump takes it.
CREATE INDEX jobs_backlog ON jobs (tenant_id, priority DESC, created_at, id)
    WHERE status = 'PENDING' AND published_at IS NULL;
-- In flight on the broker or in a worker.
CREATE INDEX jobs_in_flight ON jobs (tenant_id)
    WHERE status IN ('PENDING', 'PROCESSING') AND published_at IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Every admin action, with before and after.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    tenant_id   text REFERENCES tenants (id),
    actor       text NOT NULL,
    action      text NOT NULL,
    before      jsonb,
    after       jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, at);

-- Dead letters, recorded from the dead-letter queue with their reason.
CREATE TABLE dead_letters (
    id           uuid PRIMARY KEY,
    tenant_id    text,
    job_id       uuid,
    reason       text NOT NULL,
    body         bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);
CREATE INDEX dead_letters_tenant ON dead_letters (tenant_id, created_at);

-- Live workers: a heartbeat row each.
CREATE TABLE workers (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    jobs_done     bigint NOT NULL DEFAULT 0,
    in_flight     integer NOT NULL DEFAULT 0
);
