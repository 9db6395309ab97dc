"""Helpers shared by the integration tests."""

import dagster as dg

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


def catalogued_image(cms, source, name: str):
    """A ready image row with no blobs: enough for whatever refuses or deletes before reading bytes."""
    from records import ImageState

    image = cms.images.reserve(
        image_id=None,
        name=name,
        description=None,
        source=source,
        blob_storage_url="http://127.0.0.1:1/none",
        blob_container="none",
        blob_path="images/none",
        run_id=None,
    )
    return cms.images.transition(
        image.id, ImageState.ready, reason="test", backup_size_bytes=1, backup_checksum="0" * 64
    )


def cli_runner(capsys):
    """`toygres-pipelines ...` in process: invoke(*argv) -> (exit code, stdout, stderr)."""
    from toygres_pipelines import cli

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke
