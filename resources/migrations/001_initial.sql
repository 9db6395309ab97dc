-- The toygres CMS schema: instances, images, their state events, and the request queues.
-- Shaped like the toygres control plane so a real deployment can point at it.
-- Applied by CMSResource.migrate() inside one transaction, under an advisory lock.

CREATE SCHEMA IF NOT EXISTS toygres_cms;

CREATE TABLE toygres_cms.instances (
    id                     uuid PRIMARY KEY,
    user_name              text NOT NULL,
    k8s_name               text NOT NULL,
    namespace              text NOT NULL,
    postgres_version       text NOT NULL,
    storage_size_gb        integer NOT NULL CHECK (storage_size_gb > 0),
    use_load_balancer      boolean NOT NULL DEFAULT false,
    dns_name               text,
    ip_connection_string   text,
    dns_connection_string  text,
    external_ip            text,
    state                  text NOT NULL,
    image_type             text NOT NULL DEFAULT 'stock',
    source_image_id        uuid,
    error_message          text,
    run_id                 text,
    tags                   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT instances_k8s_name_key UNIQUE (k8s_name),
    CONSTRAINT instances_state_check
        CHECK (state IN ('creating', 'running', 'stopped', 'deleting', 'deleted', 'failed')),
    CONSTRAINT instances_image_type_check CHECK (image_type IN ('stock', 'pg_durable'))
);

-- A DNS name belongs to at most one live (creating or running) instance.
CREATE UNIQUE INDEX instances_dns_name_active_key
    ON toygres_cms.instances (dns_name)
    WHERE state IN ('creating', 'running');
CREATE INDEX instances_state_idx ON toygres_cms.instances (state);
CREATE INDEX instances_run_id_idx ON toygres_cms.instances (run_id);

CREATE TABLE toygres_cms.images (
    id                         uuid PRIMARY KEY,
    name                       text NOT NULL,
    description                text,
    source_instance_id         uuid,
    source_k8s_name            text NOT NULL,
    source_namespace           text NOT NULL,
    blob_storage_url           text NOT NULL,
    blob_container             text NOT NULL,
    blob_path                  text NOT NULL,
    storage_size_gb            integer NOT NULL CHECK (storage_size_gb > 0),
    postgres_version           text NOT NULL,
    image_type                 text NOT NULL DEFAULT 'stock',
    -- A Fernet token (never the plaintext password); see CMSResource.set_image_password.
    source_password_encrypted  bytea,
    backup_size_bytes          bigint CHECK (backup_size_bytes >= 0),
    backup_checksum            text,
    state                      text NOT NULL,
    run_id                     text,
    error_message              text,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    ready_at                   timestamptz,
    deleted_at                 timestamptz,
    CONSTRAINT images_state_check
        CHECK (state IN ('creating', 'ready', 'failed', 'deleting', 'deleted')),
    CONSTRAINT images_image_type_check CHECK (image_type IN ('stock', 'pg_durable'))
);

-- An image name is taken while the image is live; a failed or deleted image frees it.
CREATE UNIQUE INDEX images_name_active_key
    ON toygres_cms.images (name)
    WHERE state NOT IN ('deleted', 'failed');
CREATE INDEX images_name_idx ON toygres_cms.images (name);
CREATE INDEX images_state_idx ON toygres_cms.images (state);
CREATE INDEX images_run_id_idx ON toygres_cms.images (run_id);

ALTER TABLE toygres_cms.instances
    ADD CONSTRAINT instances_source_image_id_fkey
    FOREIGN KEY (source_image_id) REFERENCES toygres_cms.images (id) ON DELETE SET NULL;
ALTER TABLE toygres_cms.images
    ADD CONSTRAINT images_source_instance_id_fkey
    FOREIGN KEY (source_instance_id) REFERENCES toygres_cms.instances (id) ON DELETE SET NULL;

CREATE TABLE toygres_cms.events (
    id           bigserial PRIMARY KEY,
    entity_type  text NOT NULL,
    entity_id    uuid NOT NULL,
    from_state   text,
    to_state     text NOT NULL,
    reason       text,
    run_id       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_entity_type_check
        CHECK (entity_type IN ('image', 'instance', 'image_request', 'restore_request'))
);
CREATE INDEX events_entity_idx ON toygres_cms.events (entity_id, id);
CREATE INDEX events_run_id_idx ON toygres_cms.events (run_id);

CREATE TABLE toygres_cms.image_requests (
    id               uuid PRIMARY KEY,
    image_name       text NOT NULL,
    source_instance  text NOT NULL,
    description      text,
    state            text NOT NULL DEFAULT 'pending',
    run_id           text,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT image_requests_state_check
        CHECK (state IN ('pending', 'accepted', 'succeeded', 'failed', 'rejected'))
);
CREATE INDEX image_requests_pending_idx ON toygres_cms.image_requests (created_at) WHERE state = 'pending';
CREATE INDEX image_requests_run_id_idx ON toygres_cms.image_requests (run_id);

CREATE TABLE toygres_cms.restore_requests (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    dns_label         text NOT NULL,
    source_image_id   text,
    namespace         text NOT NULL,
    storage_size_gb   integer NOT NULL,
    internal          boolean NOT NULL DEFAULT false,
    runtime_image_id  text,
    image_override    text,
    state             text NOT NULL DEFAULT 'pending',
    instance_id       uuid REFERENCES toygres_cms.instances (id) ON DELETE SET NULL,
    run_id            text,
    reason            text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT restore_requests_state_check
        CHECK (state IN ('pending', 'accepted', 'succeeded', 'failed', 'rejected'))
);
CREATE INDEX restore_requests_pending_idx ON toygres_cms.restore_requests (created_at) WHERE state = 'pending';
CREATE INDEX restore_requests_run_id_idx ON toygres_cms.restore_requests (run_id);
