"""`toygres-pipelines pitr-status`: per running instance, its recoverable window (earliest and
latest second, from the catalogue), its archive lag and gaps, and its ready base backups.
Exit 4 when an instance has no window, a gap, or a lag past the RPO target."""

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import BaseModel

from records import InstanceState
from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_OK, EXIT_OUT_OF_WINDOWS
from toygres_pipelines.cli.output import print_json, print_table, when
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.cli.settings import automation_settings
from toygres_pipelines.pitr.checks import RPO_ENV, archive_health
from toygres_pipelines.pitr.window import window_of
from toygres_pipelines.resources_from_env import blob_from_env, platform_from_env


class PitrStatusRow(BaseModel):
    instance: str
    earliest: datetime | None
    latest: datetime | None
    lag_seconds: float | None
    base_backups: int
    problems: list[str]
    archiver_error: str | None


def cmd_pitr_status(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    blob = blob_from_env().process_config_and_initialize()
    platform = platform_from_env()
    rpo = automation_settings().rpo_target_seconds
    now = datetime.now(UTC)
    rows = []
    for instance in cms.instances.list([InstanceState.running]):
        state = window_of(cms, blob, instance)
        health = archive_health(cms, blob, platform, instance, now)
        problems = [*health.gaps]
        if health.why is not None:
            problems.append(f"archiver: {health.why}")
        if state.window is None:
            problems.append(f"no window: {state.why_none}")
        if not health.fresh(rpo):
            problems.append(health.describe_lag(rpo))
        rows.append(
            PitrStatusRow(
                instance=f"{instance.namespace}/{instance.k8s_name}",
                earliest=state.window.earliest if state.window else None,
                latest=state.window.latest if state.window else None,
                lag_seconds=health.lag_seconds,
                base_backups=len(cms.base_backups.list(instance.id)),
                problems=problems,
                archiver_error=health.why,
            )
        )
    if args.json:
        print_json(
            [{**r.model_dump(mode="json"), "earliest": when(r.earliest), "latest": when(r.latest)} for r in rows], out
        )
    else:
        print_table(
            ["INSTANCE", "EARLIEST", "LATEST", "LAG (S)", "BASE BACKUPS", "STATUS"],
            [
                [
                    r.instance,
                    when(r.earliest),
                    when(r.latest),
                    None if r.lag_seconds is None else f"{r.lag_seconds:.1f}",
                    r.base_backups,
                    "; ".join(r.problems) or "ok",
                ]
                for r in rows
            ],
            out,
        )
    return EXIT_OUT_OF_WINDOWS if any(r.problems for r in rows) else EXIT_OK


def add_pitr_commands(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    add_command(
        sub,
        parent,
        "pitr-status",
        cmd_pitr_status,
        help="per running instance: recoverable window, archive lag and gaps, base backups",
        description="Per running instance: the earliest and latest second it can be restored to (from its ready "
        "base backups and its WAL archive), the archive's lag and gaps. Exit "
        f"{EXIT_OUT_OF_WINDOWS} when any instance has no window, a gap, or a lag over the RPO target "
        f"({RPO_ENV}, default 60 s).",
    )
