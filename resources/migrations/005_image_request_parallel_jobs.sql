-- Parallel mode of a backup request (records/requests.py BackupFields.parallel_jobs): 1 is the
-- single pg_dump -Fc stream; the rule (1-16) is checked by every entry point, not here, so the
-- request sensor can reject a bad row with its reason.
ALTER TABLE toygres_cms.image_requests ADD COLUMN parallel_jobs integer NOT NULL DEFAULT 1;
