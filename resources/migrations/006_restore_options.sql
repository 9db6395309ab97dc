-- Selective restore and upgrade on restore: a restore request may name the databases to restore
-- (NULL: all) and a newer PostgreSQL major (NULL: the image's); an instance records the major of
-- the image it was restored from beside its own.
ALTER TABLE toygres_cms.restore_requests ADD COLUMN databases text[];
ALTER TABLE toygres_cms.restore_requests ADD COLUMN postgres_version text;
ALTER TABLE toygres_cms.instances ADD COLUMN source_postgres_version text;
