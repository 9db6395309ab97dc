"""Helpers shared by the integration tests."""

import uuid
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from psycopg import sql

from records import Image, ImageRequest, ImageState, ImageType, Instance, InstanceState, RestoreRequest
from records.drills import Drill, DrillResult
from records.requests import ImageRequestFields, RestoreRequestFields
from records.wal import BaseBackup, BaseBackupState
from toygres_pipelines.images.assets import BackupConfig, image
from toygres_pipelines.images.jobs import backup_form_run_config


def materialize_image(resources, key: str, config: dict | None = None, raise_on_error: bool = True, instance=None):
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("images", [key])
    return dg.materialize(
        [image],
        partition_key=key,
        resources=resources,
        instance=instance,
        run_config=backup_form_run_config(BackupConfig.model_construct(**(config or {}))),
        raise_on_error=raise_on_error,
    )


def sensor_named(definitions: dg.Definitions, name: str) -> dg.SensorDefinition:
    return next(s for s in definitions.sensors or [] if s.name == name)


def schedule_named(definitions: dg.Definitions, name: str) -> dg.ScheduleDefinition:
    return next(s for s in definitions.schedules or [] if s.name == name)


def run_logs(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(run_id))


def failure_text(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return "\n".join(str(e.event_specific_data.error.to_string()) for e in failures)


def cms_text(cms) -> str:
    """Every row of every CMS table (events included), as text: for 'no secret stored' checks."""
    import psycopg

    with psycopg.connect(cms.dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'toygres_cms'"
            ).fetchall()
        ]
        assert {"instances", "images", "events", "restore_requests", "image_requests"} <= set(tables)
        return "\n".join(
            row[0]
            for table in tables
            for row in conn.execute(f'SELECT t::text FROM toygres_cms."{table}" t').fetchall()
        )


def dagster_text(instance: dg.DagsterInstance) -> str:
    """Run config, tags and every log line of every run the Dagster instance stored."""
    parts = []
    for run in instance.get_runs():
        parts += [repr(run.run_config), repr(run.tags), run_logs(instance, run.run_id)]
    return "\n".join(parts)


# ---- one factory per CMS record: defaults anything may use, keyword overrides for what a test means


def add_instance(cms, k8s_name: str = "demo-abcde", **overrides) -> Instance:
    """An instance row, running unless told (`state=`); user_name is k8s_name without its suffix."""
    values: dict[str, Any] = {
        "user_name": k8s_name.rsplit("-", 1)[0],
        "k8s_name": k8s_name,
        "namespace": "default",
        "postgres_version": "15",
        "storage_size_gb": 1,
        "use_load_balancer": False,
        "dns_name": None,
        "image_type": ImageType.stock,
        "state": InstanceState.running,
    }
    return cms.instances.create(**{**values, **overrides})


def add_image(
    cms,
    source: Instance,
    name: str,
    *,
    state: ImageState = ImageState.creating,
    blob=None,
    run_id: str | None = None,
    description: str | None = None,
    image_id: uuid.UUID | None = None,
    **finish: Any,
) -> Image:
    """An image row of `source` as a backup makes it: reserved (creating), then moved to `state`
    (ready: size 1 and a zero checksum unless `finish` says; failed: reason "test"). Its blob
    address is `blob`'s container when given, else one nothing answers on; no blob is written."""
    image_id = image_id or uuid.uuid4()
    image = cms.images.reserve(
        image_id=image_id,
        name=name,
        description=description,
        source=source,
        blob_storage_url=blob.storage_url if blob else "http://127.0.0.1:1/none",
        blob_container=blob.container if blob else "none",
        blob_path=f"images/{image_id}",
        run_id=run_id,
    )
    if state is ImageState.ready:
        finish = {"reason": "test", "backup_size_bytes": 1, "backup_checksum": "0" * 64, **finish}
    elif state is ImageState.failed:
        finish = {"reason": "test", **finish}
    elif state is not ImageState.creating:
        raise ValueError(f"add_image makes creating, ready or failed images, not {state}")
    return image if state is ImageState.creating else cms.images.transition(image.id, state, **finish)


def catalogued_image(cms, source: Instance, name: str) -> Image:
    """A ready image row with no blobs: enough for whatever refuses or deletes before reading bytes."""
    return add_image(cms, source, name, state=ImageState.ready)


def restore_request(cms, **overrides) -> RestoreRequest:
    """A pending restore request (a copy named `copy`); `source_image_id=None` writes the row
    another client may write into the nullable column, which the record itself refuses."""
    values: dict[str, Any] = {
        "name": "copy",
        "dns_label": "copy-db",
        "source_image_id": "",
        "namespace": "default",
        "storage_size_gb": 1,
        "internal": False,
        **overrides,
    }
    if values["source_image_id"] is None:
        return cms.requests.create(RestoreRequestFields.model_construct(**values))
    return cms.requests.create(RestoreRequestFields(**values))


def image_request(cms, source_instance: str, image_name: str, **overrides) -> ImageRequest:
    """A pending backup request."""
    return cms.requests.create(ImageRequestFields(source_instance=source_instance, image_name=image_name, **overrides))


def insert_restore_request(conn, *, databases_sql: str = "NULL", **columns: Any) -> uuid.UUID:
    """A restore_requests row written in SQL, past the record's rules (a malformed row another client
    may write); `databases_sql` is an SQL expression for the databases column."""
    values = {
        "id": uuid.uuid4(),
        "name": "copy",
        "dns_label": "copy-db",
        "source_image_id": "",
        "namespace": "default",
        "storage_size_gb": 1,
        "state": "pending",
        **columns,
    }
    conn.execute(
        sql.SQL("INSERT INTO toygres_cms.restore_requests ({}, databases) VALUES ({}, {})").format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
            sql.SQL(databases_sql),
        ),
        list(values.values()),
    )
    return values["id"]


def add_drill(cms, image: Image, run_id: str, **overrides) -> Drill:
    """A running drill of `image` (its source instance unless `source_instance_id=`)."""
    values: dict[str, Any] = {"source_instance_id": image.source_instance_id, "run_id": run_id, **overrides}
    return cms.drills.start(image.id, **values)


# ---- the same records without a CMS, for the pure tests: what a row reads back as


EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _stamped(values: dict[str, Any], overrides: dict[str, Any], stamp: str = "created_at") -> dict[str, Any]:
    values = {**values, **overrides}
    values.setdefault("updated_at", values[stamp])
    return values


def instance_record(k8s_name: str = "demo", **overrides) -> Instance:
    """An Instance row, running, created at EPOCH (updated_at follows created_at unless given)."""
    values = {
        "id": uuid.uuid4(),
        "user_name": k8s_name,
        "k8s_name": k8s_name,
        "namespace": "default",
        "postgres_version": "16",
        "storage_size_gb": 1,
        "use_load_balancer": False,
        "state": InstanceState.running,
        "image_type": ImageType.stock,
        "created_at": EPOCH,
    }
    return Instance(**_stamped(values, overrides))


def image_record(source: Instance | None = None, name: str = "demo__1", **overrides) -> Image:
    """An Image row of `source` (none: an image whose instance row is gone), ready, made at EPOCH."""
    image_id = overrides.pop("id", None) or uuid.uuid4()
    values = {
        "id": image_id,
        "name": name,
        "source_instance_id": source.id if source else None,
        "source_k8s_name": source.k8s_name if source else name.split("__")[0],
        "source_namespace": source.namespace if source else "default",
        "blob_storage_url": "http://blob",
        "blob_container": "c",
        "blob_path": f"images/{image_id}",
        "storage_size_gb": 1,
        "postgres_version": "16",
        "image_type": ImageType.stock,
        "state": ImageState.ready,
        "created_at": EPOCH,
    }
    return Image(**_stamped(values, overrides))


def drill_record(source: Instance | None = None, **overrides) -> Drill:
    """A restore_drills row of an image of `source`, running since EPOCH."""
    values = {
        "id": uuid.uuid4(),
        "image_id": uuid.uuid4(),
        "source_instance_id": source.id if source else None,
        "run_id": str(uuid.uuid4()),
        "started_at": EPOCH,
        "result": DrillResult.running,
        **overrides,
    }
    return Drill(**values)


def base_backup_record(**overrides) -> BaseBackup:
    """A base_backups row, ready, made at EPOCH."""
    backup_id = overrides.pop("id", None) or uuid.uuid4()
    values = {
        "id": backup_id,
        "instance_id": uuid.uuid4(),
        "namespace": "default",
        "k8s_name": "demo",
        "state": BaseBackupState.ready,
        "blob_path": f"base/{backup_id}",
        "postgres_version": "16",
        "created_at": EPOCH,
    }
    return BaseBackup(**_stamped(values, overrides))


def cli_runner(capsys):
    """`toygres-pipelines ...` in process: invoke(*argv) -> (exit code, stdout, stderr)."""
    from toygres_pipelines import cli

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def topology_without_storage(tmp_path, code_env: dict[str, str]):
    """A DagsterTopology whose processes get the code location's `code_env` and a Dagster storage
    that is never reached (for what the topology hands each process, or a process started alone)."""
    from toygres_pipelines.dev.topology import DagsterTopology

    storage = {name: "x" for name in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST")}
    return DagsterTopology(
        home=tmp_path,
        workspace=tmp_path / "workspace.yaml",
        log_dir=tmp_path / "logs",
        dagster_env={"DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_PORT": "1", "DAGSTER_PG_DB": "d", **storage},
        code_env=code_env,
        code_port=4000,
    )
