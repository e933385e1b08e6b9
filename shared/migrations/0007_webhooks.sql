-- Webhooks: a transactional outbox of events for tenants, their signing secrets, and
-- the markers that make quota notifications fire once per crossing.

-- One row per event. Written in the transaction of the state change that causes it
-- (a job ending, a reservation crossing 80 %), so an event exists exactly when its
-- cause committed. The delivery loop of every dispatcher claims due rows with
-- `FOR UPDATE SKIP LOCKED` and a lease (`next_attempt_at` moved past the attempt),
-- so one process attempts an event at a time and a crashed attempt is retried.
CREATE TABLE webhook_events (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_type       text NOT NULL CHECK (event_type IN ('job_completed', 'job_failed', 'quota_warning', 'quota_exceeded')),
    -- The event's `data` object; the envelope (id, type, tenant, time) is built from columns.
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Retries stop (the event turns dead) once the next attempt would fall after this.
    give_up_at       timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    last_error       text,
    last_status_code integer,
    last_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
-- The delivery loop's probe: due pending events, oldest first.
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending';
-- The tenant's deliveries view: newest first.
CREATE INDEX webhook_events_tenant ON webhook_events (tenant_id, created_at DESC, id DESC);
-- Pruning: delivered and dead events past their retention.
CREATE INDEX webhook_events_done ON webhook_events (created_at) WHERE status <> 'pending';

-- A tenant's signing secret. Rotation keeps the previous one signing as well until
-- `previous_until`, so receivers can switch without missing a delivery. Stored in
-- clear: an HMAC key has to be, to sign with.
CREATE TABLE webhook_secrets (
    tenant_id       text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    secret          text NOT NULL,
    previous_secret text,
    previous_until  timestamptz,
    rotated_at      timestamptz NOT NULL DEFAULT now()
);

-- Quota notifications already sent, so each fires once per resource per period
-- (see `db::webhooks::quota_event`).
CREATE TABLE webhook_quota_marks (
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    resource   text NOT NULL,
    event_type text NOT NULL,
    period     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, resource, event_type, period)
);
