-- Lifecycle: a pinned image is never deleted (by retention or on request); an instance may
-- override fields of the default retention policy (a JSON object of RetentionPolicy fields).
ALTER TABLE toygres_cms.images ADD COLUMN pinned boolean NOT NULL DEFAULT false;
ALTER TABLE toygres_cms.instances ADD COLUMN retention_override jsonb;
ALTER TABLE toygres_cms.instances ADD CONSTRAINT instances_retention_override_check
    CHECK (retention_override IS NULL OR jsonb_typeof(retention_override) = 'object');
