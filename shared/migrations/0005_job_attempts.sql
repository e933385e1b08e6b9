-- Attempt history: one row per attempt of a job (which worker, when, how it ended),
-- plus a REPLAYED marker each time an admin replays the job's dead letter.
-- `jobs.attempts` stays the counter the retry limit is checked against; this is the
-- record a tenant or operator reads to see what happened.
CREATE TABLE job_attempts (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    job_id      uuid NOT NULL REFERENCES jobs (id),
    attempt     integer NOT NULL,
    worker_id   text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    -- RUNNING until it ends; INTERRUPTED when a later attempt found it still running
    -- (its worker died); RETRY when a retryable failure sent the job to a delay queue.
    outcome     text NOT NULL DEFAULT 'RUNNING'
                CHECK (outcome IN ('RUNNING', 'FINISHED', 'RETRY', 'FAILED', 'INTERRUPTED', 'REPLAYED')),
    error_code  text,
    error       text
);
CREATE INDEX job_attempts_job ON job_attempts (tenant_id, job_id, id);

-- The AMQP message id a dead letter arrived with (a job id for the fleet's own
-- messages), so an operator can tell unattributed dead letters apart.
ALTER TABLE dead_letters ADD COLUMN message_id text;
