-- Fleet scale (thousands of instances, tens of thousands of images; docs/benchmarks.md): the reads
-- the sensors, the schedules and the CLI make on every tick or listing find their rows by index.

-- `toygres-pipelines images` pages through the catalogue in the order created_at, id.
CREATE INDEX images_created_at_id_idx ON toygres_cms.images (created_at, id);

-- The request sensors, the reconciler and the in-use checks read the requests in flight
-- (pending, accepted) among every request ever made.
CREATE INDEX image_requests_state_idx ON toygres_cms.image_requests (state);
CREATE INDEX restore_requests_state_idx ON toygres_cms.restore_requests (state);

-- A repeated restore request finds the instance it made by tags.request_key.
CREATE INDEX instances_request_key_idx ON toygres_cms.instances ((tags ->> 'request_key'));
