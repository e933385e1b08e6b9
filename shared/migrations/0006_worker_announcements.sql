-- What a worker process announces with each heartbeat, beyond 0001's columns: how it
-- runs (a `worker` process or workers inside a dispatcher), its concurrency and
-- prefetch, where it serves /metrics, and its version (for mixed fleets mid-rollout).
ALTER TABLE workers
    ADD COLUMN mode          text    NOT NULL DEFAULT 'worker' CHECK (mode IN ('worker', 'dispatcher')),
    ADD COLUMN concurrency   integer NOT NULL DEFAULT 1,
    ADD COLUMN prefetch      integer NOT NULL DEFAULT 0,
    ADD COLUMN metrics_addr  text,
    ADD COLUMN version       text    NOT NULL DEFAULT '';
-- Liveness is judged on the heartbeat: the view reads the freshest rows.
CREATE INDEX workers_heartbeat ON workers (heartbeat_at);
