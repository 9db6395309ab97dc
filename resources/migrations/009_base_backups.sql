-- Point-in-time recovery (docs/pitr.md): physical base backups of an instance (pg_basebackup),
-- kind 'base' beside the logical images. A backup is `ready` only once pg_verifybackup passed and
-- its blobs are stored; consistent_at is when it became consistent: the earliest second it can
-- restore to. Its WAL lives under wal/<namespace>/<k8s_name>/<system_identifier>/<timeline>/.
CREATE TABLE toygres_cms.base_backups (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind                        text NOT NULL DEFAULT 'base' CHECK (kind = 'base'),
    instance_id                 uuid NOT NULL REFERENCES toygres_cms.instances (id),
    namespace                   text NOT NULL,
    k8s_name                    text NOT NULL,
    state                       text NOT NULL DEFAULT 'creating'
                                CHECK (state IN ('creating', 'ready', 'failed', 'deleted')),
    run_id                      text,
    blob_path                   text NOT NULL,
    postgres_version            text NOT NULL,
    system_identifier           text CHECK (system_identifier IS NULL OR system_identifier ~ '^[0-9]{1,20}$'),
    timeline                    integer CHECK (timeline IS NULL OR timeline > 0),
    start_segment               text CHECK (start_segment IS NULL OR start_segment ~ '^[0-9A-F]{24}$'),
    consistent_at               timestamptz,
    size_bytes                  bigint,
    sha256                      text CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
    encryption_recipient        text CHECK (encryption_recipient IS NULL
                                            OR encryption_recipient ~ '^age1[02-9ac-hj-np-z]{58}$'),
    source_password_encrypted   bytea,
    reason                      text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'ready' OR (system_identifier IS NOT NULL AND timeline IS NOT NULL
                                AND start_segment IS NOT NULL AND consistent_at IS NOT NULL
                                AND sha256 IS NOT NULL))
);
CREATE INDEX base_backups_instance_idx ON toygres_cms.base_backups (instance_id, consistent_at DESC);
CREATE INDEX base_backups_state_idx ON toygres_cms.base_backups (state);
