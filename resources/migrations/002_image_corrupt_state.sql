-- An image whose bytes failed verification at restore becomes `corrupt`: never offered for a
-- restore again until it is re-verified (corrupt -> ready). It keeps its name reserved.
ALTER TABLE toygres_cms.images DROP CONSTRAINT images_state_check;
ALTER TABLE toygres_cms.images ADD CONSTRAINT images_state_check
    CHECK (state IN ('creating', 'ready', 'failed', 'deleting', 'deleted', 'corrupt'));
