"""`toygres-pipelines status`: per running instance, its newest image and its age, its last drill,
that drill's result and recovery time. Exit 4 when any instance is out of its windows (the
backups_fresh / drills_fresh settings, TOYGRES_BACKUP_FRESHNESS_HOURS and
TOYGRES_DRILL_FRESHNESS_DAYS) or its newest drill failed."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from records import ImageState, InstanceState
from records.freshness import instance_status
from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_OK, EXIT_OUT_OF_WINDOWS
from toygres_pipelines.cli.output import print_json, print_table, when
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.cli.settings import automation_settings, described
from toygres_pipelines.pitr.summary import PitrSummary, pitr_summaries


def cmd_status(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    settings = automation_settings()
    running = cms.instances.list([InstanceState.running])
    now = datetime.now(UTC)
    pitr = pitr_summaries(cms, running, now)
    rows = instance_status(
        running,
        cms.images.list([ImageState.ready]),
        cms.drills.list(),
        now,
        timedelta(hours=settings.backup_freshness_hours),
        timedelta(days=settings.drill_freshness_days),
        timedelta(hours=settings.new_instance_grace_hours),
    )
    summaries = pitr or {}
    empty = PitrSummary()
    if args.json:
        print_json(
            [
                {
                    **row.model_dump(mode="json"),
                    "in_windows": row.in_windows,
                    "pitr_earliest": when(summaries.get(row.instance, empty).earliest),
                    "pitr_latest": when(summaries.get(row.instance, empty).latest),
                    "archive_lag_seconds": summaries.get(row.instance, empty).lag_seconds,
                }
                for row in rows
            ],
            out,
        )
    else:
        print_table(
            ["INSTANCE", "NEWEST IMAGE", "AGE (H)", "LAST DRILL", "RESULT", "RECOVERY (S)", "PITR WINDOW",
             "ARCHIVE LAG (S)", "STATUS"],
            [
                [
                    r.instance,
                    r.newest_image,
                    r.newest_image_age_hours,
                    when(r.last_drill_started_at),
                    r.last_drill_result,
                    _seconds(r.last_drill_recovery_seconds),
                    summaries.get(r.instance, empty).window_text(when),
                    _seconds(summaries.get(r.instance, empty).lag_seconds),
                    "; ".join(r.problems) or r.note or "ok",
                ]
                for r in rows
            ],
            out,
        )  # fmt: skip
        if pitr is None:
            out.write("PITR window and archive lag not shown: blob storage is not configured (TOYGRES_BLOB_*)\n")
    return EXIT_OK if all(r.in_windows for r in rows) else EXIT_OUT_OF_WINDOWS


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def add_status_command(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    add_command(
        sub,
        parent,
        "status",
        cmd_status,
        help="per running instance: newest image and its age, last drill and its recovery time, PITR window and "
        "archive lag",
        description="Per running instance: its newest ready image and its age, its last restore drill, that "
        f"drill's result and recovery time. Exit {EXIT_OUT_OF_WINDOWS} when any instance's newest image is older "
        f"than {described('backup_freshness_hours')}, its newest successful drill older than "
        f"{described('drill_freshness_days')}, or its newest drill failed.",
    )
