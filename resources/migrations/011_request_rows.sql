-- Restore request rows every reader can trust (issue 19).
--
-- source_image_id: an image id in any spelling Python's uuid.UUID accepts (upper case, braces,
-- urn:uuid:, no dashes) is stored in the one canonical spelling, by a trigger, whoever inserts
-- the row; rows already stored are rewritten. Image names can never be UUID-shaped, so this
-- never turns a name into an id.
CREATE FUNCTION toygres_cms.canonical_image_ref(ref text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    digits text := replace(btrim(replace(replace(ref, 'urn:', ''), 'uuid:', ''), '{}'), '-', '');
BEGIN
    IF digits ~ '^[0-9A-Fa-f]{32}$' THEN
        RETURN lower(digits)::uuid::text;
    END IF;
    RETURN ref;
END
$$;

UPDATE toygres_cms.restore_requests
   SET source_image_id = toygres_cms.canonical_image_ref(source_image_id)
 WHERE source_image_id IS DISTINCT FROM toygres_cms.canonical_image_ref(source_image_id);

CREATE FUNCTION toygres_cms.restore_request_canonical_image_ref() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.source_image_id := toygres_cms.canonical_image_ref(NEW.source_image_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER restore_requests_canonical_image_ref
    BEFORE INSERT OR UPDATE OF source_image_id ON toygres_cms.restore_requests
    FOR EACH ROW EXECUTE FUNCTION toygres_cms.restore_request_canonical_image_ref();

-- databases: NULL (all), or a one-dimensional list of names without NULLs. A row already stored
-- with another value is settled, never left for a reader to trip on: pending -> rejected,
-- accepted -> failed (terminal rows keep their state), the value itself quoted in the reason
-- and the column set to NULL, with the event of the change.
CREATE TEMP TABLE malformed_databases ON COMMIT DROP AS
SELECT id, state AS from_state,
       CASE state WHEN 'pending' THEN 'rejected' WHEN 'accepted' THEN 'failed' ELSE state END AS to_state,
       'databases: the stored value ' || quote_literal(databases::text)
           || ' is not a list of database names (one dimension, no NULL); settled by migration 011' AS why
  FROM toygres_cms.restore_requests
 WHERE databases IS NOT NULL AND cardinality(databases) > 0
   AND (array_ndims(databases) <> 1 OR array_position(databases, NULL) IS NOT NULL);

UPDATE toygres_cms.restore_requests r
   SET databases = NULL, state = m.to_state, updated_at = now(),
       reason = CASE WHEN r.reason IS NULL THEN m.why ELSE r.reason || '; ' || m.why END
  FROM malformed_databases m
 WHERE r.id = m.id;

INSERT INTO toygres_cms.events (entity_type, entity_id, from_state, to_state, reason)
SELECT 'restore_request', id, from_state, to_state, why FROM malformed_databases WHERE from_state <> to_state;

ALTER TABLE toygres_cms.restore_requests ADD CONSTRAINT restore_requests_databases_check
    CHECK (databases IS NULL OR cardinality(databases) = 0
           OR (array_ndims(databases) = 1 AND array_position(databases, NULL) IS NULL));
