"""The restore launchpad: what every restore needs is required by the schema, so the UI's
"Scaffold missing config" yields a config that runs once those fields are filled in."""

from __future__ import annotations

import dagster as dg
import pytest

from toygres_pipelines.restores.jobs import restore_instance

REQUIRED = {"name", "dns_label", "source_image_id"}


def launchpad_fields() -> dict:
    ops = restore_instance.run_config_schema.config_type.fields["ops"].config_type.fields
    return ops["validate_request"].config_type.fields["config"].config_type.fields


def test_scaffolding_asks_for_exactly_what_a_restore_needs():
    # What "Scaffold missing config" adds: the required fields (the others have defaults).
    assert {name for name, field in launchpad_fields().items() if field.is_required} == REQUIRED


def test_scaffold_filled_in_is_a_valid_run_config():
    filled = {"name": "copy", "dns_label": "copy-db", "source_image_id": "pagila-demo__nightly-20260101"}
    assert dg.validate_run_config(restore_instance, {"ops": {"validate_request": {"config": filled}}})


def test_a_config_without_the_image_is_refused_before_the_run_starts():
    config = {"ops": {"validate_request": {"config": {"name": "copy", "dns_label": "copy-db"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="source_image_id"):
        dg.validate_run_config(restore_instance, config)


def test_every_launchpad_field_is_described():
    config = launchpad_fields()
    assert all(field.description for field in config.values()), [n for n, f in config.items() if not f.description]
