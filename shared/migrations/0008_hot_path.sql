-- The hot path rebuilt around groups of jobs (issue 15).
--
-- PROCESSING_JOBS is enforced where jobs are handed out: the pump never has more than
-- a tenant's limit of its jobs in flight (published and not ended), counted from
-- `jobs` under a per-tenant lock, so no counter row is locked by every start and
-- finish. The counter and the per-job slot flag go.
ALTER TABLE tenant_usage DROP COLUMN processing_jobs;
ALTER TABLE jobs DROP COLUMN holds_slot;

-- The chunking parameters a finished job was processed with: with its text, its
-- document's metadata and the database's model, what re-derives its points when the
-- embedded store recovers writes that its last checkpoint did not cover.
ALTER TABLE jobs ADD COLUMN params jsonb;

-- Finished jobs whose text is still kept (until a checkpoint of the embedded store
-- covers them): what recovery reads and what each checkpoint releases.
CREATE INDEX jobs_unflushed ON jobs (finished_at, id)
    WHERE status = 'FINISHED' AND body IS NOT NULL;

-- Room on each page for the updates a job's life makes (published, started, finished,
-- text released), so those that change no indexed column stay heap-only (HOT).
ALTER TABLE jobs SET (fillfactor = 80);
ALTER TABLE documents SET (fillfactor = 80);
