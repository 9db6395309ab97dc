"""Helpers shared by the integration tests."""

import dagster as dg

from toygres_pipelines.images.assets import image


def materialize_image(resources, key: str, config: dict | None = None, raise_on_error: bool = True, instance=None):
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("images", [key])
    return dg.materialize(
        [image], partition_key=key, resources=resources, instance=instance,
        run_config={"ops": {"image": {"config": config or {}}}}, raise_on_error=raise_on_error,
    )


def run_logs(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(run_id))


def failure_text(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return "\n".join(str(e.event_specific_data.error.to_string()) for e in failures)
