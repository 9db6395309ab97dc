"""The shape of a run config, spelled once: each job's module builds its run config with
`op_run_config` and reads a launched run's config back with `op_config_of` (no op name or
OPS_KEY typed anywhere else; tests/test_structure.py holds it)."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

OPS_KEY = "ops"
RunConfigLike = Mapping[str, Any] | dg.RunConfig | None


def name_of(op: dg.OpDefinition | str) -> str:
    return op if isinstance(op, str) else op.name


def op_run_config(op: dg.OpDefinition | str, config: dg.Config) -> dg.RunConfig:
    """The run config setting `op`'s config to the fields set on `config`; the fields left out
    keep the launchpad's defaults (a request sends only what it says)."""
    return dg.RunConfig(ops={name_of(op): {"config": config.model_dump(mode="json", exclude_unset=True)}})


def op_config_of(run_config: RunConfigLike, op: dg.OpDefinition | str) -> dict[str, Any]:
    """The config a run config gives `op` ({} when it gives none)."""
    found: Any = run_config.to_config_dict() if isinstance(run_config, dg.RunConfig) else run_config or {}
    for key in (OPS_KEY, name_of(op), "config"):
        found = found.get(key) if isinstance(found, Mapping) else None
    return dict(found) if isinstance(found, Mapping) else {}


def op_config_fields(job: dg.JobDefinition, op: dg.OpDefinition | str) -> dict[str, Any]:
    """The launchpad's fields of `op`'s config in `job` (name -> dagster Field)."""
    ops = job.run_config_schema.config_type.fields[OPS_KEY].config_type  # type: ignore[attr-defined]
    return dict(ops.fields[name_of(op)].config_type.fields["config"].config_type.fields)
