-- PITR drills (docs/pitr.md): an instance restored to a point inside its recoverable window into a
-- scratch instance, the replayed point and pg_amcheck checked, the scratch instance deleted. One
-- row per finished drill (restore_drills rows name a logical image; these name a base backup).
CREATE TABLE toygres_cms.pitr_drills (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_instance_id  uuid NOT NULL REFERENCES toygres_cms.instances (id),
    base_backup_id      uuid REFERENCES toygres_cms.base_backups (id),
    run_id              text UNIQUE,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz NOT NULL DEFAULT now(),
    result              text NOT NULL CHECK (result IN ('passed', 'failed')),
    target_time         timestamptz,
    replayed_at         timestamptz,
    rto_seconds         double precision CHECK (rto_seconds IS NULL OR rto_seconds >= 0),
    scratch             text,
    reason              text,
    CHECK (result = 'failed' OR (target_time IS NOT NULL AND rto_seconds IS NOT NULL))
);
CREATE INDEX pitr_drills_source_idx ON toygres_cms.pitr_drills (source_instance_id, finished_at DESC);
