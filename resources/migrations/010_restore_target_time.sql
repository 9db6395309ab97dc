-- Point-in-time restore requests (docs/pitr.md): the target (ISO 8601 with a zone, or 'latest');
-- NULL: a restore of a logical image.
ALTER TABLE toygres_cms.restore_requests ADD COLUMN target_time text;
