-- Restore drills: an image restored into a scratch instance, every table's row count checked
-- against the manifest, the scratch instance deleted. One row per drill; result `running` until
-- the drill (or the janitor, for a drill whose run ended without finishing) settles it.
CREATE TABLE toygres_cms.restore_drills (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    image_id            uuid NOT NULL REFERENCES toygres_cms.images (id),
    source_instance_id  uuid REFERENCES toygres_cms.instances (id),
    run_id              text NOT NULL UNIQUE,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    result              text NOT NULL DEFAULT 'running'
                        CHECK (result IN ('running', 'passed', 'failed', 'uncounted')),
    recovery_seconds    double precision CHECK (recovery_seconds IS NULL OR recovery_seconds >= 0),
    seconds_per_gib     double precision CHECK (seconds_per_gib IS NULL OR seconds_per_gib >= 0),
    backup_size_bytes   bigint,
    tables_checked      integer,
    reason              text,
    CHECK ((result = 'running') = (finished_at IS NULL))
);
CREATE INDEX restore_drills_image_idx ON toygres_cms.restore_drills (image_id, started_at DESC);
CREATE INDEX restore_drills_source_idx ON toygres_cms.restore_drills (source_instance_id, started_at DESC);
CREATE INDEX restore_drills_running_idx ON toygres_cms.restore_drills (result) WHERE result = 'running';
