"""The restore launchpad: what every restore needs is required by the schema, so the UI's
"Scaffold missing config" yields a config that runs once those fields are filled in."""

from __future__ import annotations

import dagster as dg
import pytest

from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import (
    restore_config_of,
    restore_form_fields,
    restore_form_run_config,
    restore_instance,
)

REQUIRED = {"name", "dns_label", "source_image_id"}


def form_run_config(values: dict) -> dict:
    """The run config of a launchpad form filled with `values`, as typed (Dagster checks them)."""
    return restore_form_run_config(RestoreConfig.model_construct(**values)).to_config_dict()


def launchpad_fields() -> dict:
    return restore_form_fields()


def test_scaffolding_asks_for_exactly_what_a_restore_needs():
    # What "Scaffold missing config" adds: the required fields (the others have defaults).
    assert {name for name, field in launchpad_fields().items() if field.is_required} == REQUIRED


def test_scaffold_filled_in_is_a_valid_run_config():
    filled = {"name": "copy", "dns_label": "copy-db", "source_image_id": "pagila-demo__nightly-20260101"}
    assert dg.validate_run_config(restore_instance, form_run_config(filled))


def test_a_config_without_the_image_is_refused_before_the_run_starts():
    config = form_run_config({"name": "copy", "dns_label": "copy-db"})
    with pytest.raises(dg.DagsterInvalidConfigError, match="source_image_id"):
        dg.validate_run_config(restore_instance, config)


def test_every_launchpad_field_is_described():
    config = launchpad_fields()
    assert all(field.description for field in config.values()), [n for n, f in config.items() if not f.description]


# ---- what the launchpad opens with (issue 23) ---------------------------------------------------


def launchpad_default_config(job_name: str) -> dict:
    """The config the launchpad opens with (the webserver's rootDefaultYaml), for the deployed job."""
    import yaml
    from dagster._core.snap import JobSnap
    from dagster._core.snap.snap_to_yaml import default_values_yaml_from_type_snap

    from toygres_pipelines.definitions import defs

    snap = JobSnap.from_job_def(defs.resolve_job_def(job_name))
    schema = snap.config_schema_snapshot
    root = schema.get_config_snap(snap.mode_def_snaps[0].root_config_key)
    return yaml.safe_load(default_values_yaml_from_type_snap(schema, root)) or {}


def test_every_optional_field_opens_with_its_default():
    # "Scaffold missing config" adds the required fields to this; the optional ones are all there.
    opened = restore_config_of(launchpad_default_config("restore_instance"))
    optional = {name for name, field in launchpad_fields().items() if not field.is_required}
    assert set(opened) == optional


@pytest.mark.parametrize("job_name", ["restore_instance", "restore_drill", "retention", "reverify_image"])
def test_no_resource_settings_in_the_launchpad(job_name):
    # Resources are configured in the deployment (TOYGRES_* variables): a run cannot change them.
    assert "resources" not in launchpad_default_config(job_name)
    from toygres_pipelines.definitions import defs

    fields = defs.resolve_job_def(job_name).run_config_schema.config_type.fields
    resources = fields["resources"].config_type.fields if "resources" in fields else {}
    assert all(not field.config_type.fields.get("config") or not field.is_required for field in resources.values())
    assert "resources" not in launchpad_default_config(job_name)


@pytest.mark.parametrize("version", [16, "16"])
def test_a_major_is_accepted_as_a_number_or_as_text(version):
    config = {"name": "copy", "dns_label": "copy-db", "source_image_id": "pagila-demo__n", "postgres_version": version}
    assert dg.validate_run_config(restore_instance, form_run_config(config))
    assert RestoreConfig.model_validate(config).request_fields().postgres_version == "16"


def test_the_empty_defaults_mean_the_platform_s_namespace_every_database_and_the_image_s_major():
    # On the launchpad `databases: []` is the opened default, every database; a request row or
    # the CLI naming an empty list is still refused (tests/test_restore_options.py).
    fields = RestoreConfig(name="copy", dns_label="copy-db", source_image_id="img", databases=[]).request_fields()
    assert (fields.namespace, fields.databases, fields.postgres_version, fields.target_time) == (None,) * 4
