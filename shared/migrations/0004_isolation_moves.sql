-- Moves of a tenant between isolation modes (shared/src/vector/migrate.rs,
-- shared/src/db/isolation.rs). `tenants.isolation` is switched to `to_mode` when the move
-- starts; until `finished_at` is set the tenant's points may live in both namespaces, so
-- searches read both and deletions delete in both. One row per tenant: its latest move.
CREATE TABLE isolation_moves (
    tenant_id    text PRIMARY KEY REFERENCES tenants (id),
    from_mode    text NOT NULL CHECK (from_mode IN ('collection', 'partition')),
    to_mode      text NOT NULL CHECK (to_mode IN ('collection', 'partition')),
    switched_at  timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- Points found in the old namespace and copied (counted over every pass).
    points_moved bigint NOT NULL DEFAULT 0,
    -- Last failure of an attempt; the mover retries until it succeeds.
    error        text,
    CHECK (from_mode <> to_mode)
);
CREATE INDEX isolation_moves_unfinished ON isolation_moves (switched_at) WHERE finished_at IS NULL;
