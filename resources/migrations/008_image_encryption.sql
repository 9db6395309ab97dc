-- Client-side encryption: the age recipient (public key) an image's files are encrypted to,
-- copied from its verified manifest when it becomes ready; NULL for an unencrypted image.
-- Restores check it against the identities the restore jobs hold before anything is created.
ALTER TABLE toygres_cms.images ADD COLUMN encryption_recipient text;
ALTER TABLE toygres_cms.images ADD CONSTRAINT images_encryption_recipient_check
    CHECK (encryption_recipient IS NULL OR encryption_recipient ~ '^age1[02-9ac-hj-np-z]{58}$');
