"""A job of one op, tagged with its kind (the queue's limits and the run feed's filters read it)."""

from __future__ import annotations

import dagster as dg

from toygres_pipelines.shared.tags import KIND_TAG


def one_op_job(op: dg.OpDefinition, name: str, kind: str, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags={KIND_TAG: kind})
    def job() -> None:
        op()

    return job
