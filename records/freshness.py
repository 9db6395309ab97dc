"""Pure rules over CMS rows: is each running instance's newest backup and newest successful drill
recent enough, which day of the week an instance is drilled, and when an image's size is suspect."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from records.drills import RESTORED, Drill, DrillResult
from records.rows import Image, Instance, Record
from records.states import ImageState

DAYS_PER_WEEK = 7


class InstanceFreshness(Record):
    """One running instance against one window: the newest time that counts, and the verdict."""

    instance: str
    newest_at: datetime | None
    age_hours: float | None
    fresh: bool
    why: str


def is_new(instance: Instance, now: datetime, grace: timedelta) -> bool:
    """Created less than `grace` ago: its windows do not count yet (a restored copy has no image)."""
    return now - instance.created_at < grace


def new_note(instance: Instance, now: datetime, grace: timedelta) -> str:
    created = round((now - instance.created_at).total_seconds() / 3600, 1)
    return f"new (created {created} h ago; windows count after {grace.total_seconds() / 3600:g} h)"


def _judge(
    instance: Instance,
    newest: datetime | None,
    now: datetime,
    window: timedelta,
    what: str,
    grace: timedelta = timedelta(0),
):
    judged = _judge_window(instance, newest, now, window, what)
    if judged.fresh or not is_new(instance, now, grace):
        return judged
    return judged.model_copy(update={"fresh": True, "why": new_note(instance, now, grace)})


def _judge_window(instance: Instance, newest: datetime | None, now: datetime, window: timedelta, what: str):
    if newest is None:
        return InstanceFreshness(
            instance=instance.k8s_name, newest_at=None, age_hours=None, fresh=False, why=f"no {what}"
        )
    age = now - newest
    hours = round(age.total_seconds() / 3600, 1)
    fresh = age <= window
    limit = round(window.total_seconds() / 3600, 1)
    why = f"newest {what} {hours} h old" + ("" if fresh else f" (window {limit} h)")
    return InstanceFreshness(instance=instance.k8s_name, newest_at=newest, age_hours=hours, fresh=fresh, why=why)


def ready_images_of(images: Iterable[Image], instance_id: uuid.UUID) -> list[Image]:
    """The instance's ready images, newest first."""
    mine = [i for i in images if i.source_instance_id == instance_id and i.state is ImageState.ready]
    return sorted(mine, key=lambda i: i.ready_at or i.created_at, reverse=True)


def fleet_instances(instances: Iterable[Instance], drills: Iterable[Drill]) -> list[Instance]:
    """The instances the fleet's windows apply to: not a drill's scratch instance (created by the
    drill's run, running only until the drill deletes it)."""
    drill_runs = {d.run_id for d in drills}
    return [i for i in instances if i.run_id is None or i.run_id not in drill_runs]


def backup_freshness(
    instances: Iterable[Instance],
    images: Iterable[Image],
    now: datetime,
    window: timedelta,
    grace: timedelta = timedelta(0),
) -> list[InstanceFreshness]:
    """Each instance: is its newest ready image younger than `window`?"""
    images = list(images)

    def newest_ready(instance: Instance) -> datetime | None:
        newest = next(iter(ready_images_of(images, instance.id)), None)
        return (newest.ready_at or newest.created_at) if newest else None

    return _judge_each(instances, newest_ready, now, window, "ready image", grace)


def drill_freshness(
    instances: Iterable[Instance],
    drills: Iterable[Drill],
    now: datetime,
    window: timedelta,
    grace: timedelta = timedelta(0),
) -> list[InstanceFreshness]:
    """Each instance: did a drill of one of its images restore it within `window`?"""
    drills = list(drills)
    good = [d for d in drills if d.result in RESTORED]

    def newest_restored(instance: Instance) -> datetime | None:
        return max((d.started_at for d in good if d.source_instance_id == instance.id), default=None)

    return _judge_each(fleet_instances(instances, drills), newest_restored, now, window, "successful drill", grace)


def _judge_each(
    instances: Iterable[Instance],
    newest: Callable[[Instance], datetime | None],
    now: datetime,
    window: timedelta,
    what: str,
    grace: timedelta,
) -> list[InstanceFreshness]:
    """Each instance by name, judged on when `newest` says its last `what` was."""
    return [_judge(i, newest(i), now, window, what, grace) for i in sorted(instances, key=lambda i: i.k8s_name)]


def offenders(report: Iterable[InstanceFreshness]) -> list[str]:
    return [f"{r.instance} ({r.why})" for r in report if not r.fresh]


# What an instance's weekly day is for: each work spreads over the week on a day of its own.
DRILL_DAY = ""
BASE_BACKUP_DAY = "base:"
PITR_DRILL_DAY = "pitr:"


def weekday_for(k8s_name: str, work: str = DRILL_DAY) -> int:
    """The day of the week (0 = Monday) `work` runs for an instance: a stable hash, so the fleet's
    weekly work spreads over the week and an instance keeps its day across restarts and deployments."""
    return int.from_bytes(hashlib.sha256(f"{work}{k8s_name}".encode()).digest()[:8], "big") % DAYS_PER_WEEK


def drill_weekday(k8s_name: str) -> int:
    return weekday_for(k8s_name, DRILL_DAY)


def due_on(instances: Iterable[Instance], weekday: int, work: str) -> list[Instance]:
    """The instances whose day for `work` is `weekday`, by name."""
    return [i for i in sorted(instances, key=lambda i: i.k8s_name) if weekday_for(i.k8s_name, work) == weekday]


def due_drills(instances: Iterable[Instance], images: Iterable[Image], weekday: int) -> list[tuple[Instance, Image]]:
    """The instances whose drill day is `weekday`, each with its newest ready image (none: skipped)."""
    images = list(images)
    due = []
    for instance in due_on(instances, weekday, DRILL_DAY):
        newest = next(iter(ready_images_of(images, instance.id)), None)
        if newest is not None:
            due.append((instance, newest))
    return due


def size_anomaly(size_bytes: int | None, previous_bytes: int | None) -> str | None:
    """Why an image's size is suspect next to its instance's previous ready image: less than half
    or more than double it. None when plausible or when there is nothing to compare."""
    if not size_bytes or not previous_bytes:
        return None
    if size_bytes * 2 < previous_bytes:
        return f"{size_bytes} bytes is less than half the previous image's {previous_bytes}"
    if size_bytes > previous_bytes * 2:
        return f"{size_bytes} bytes is more than double the previous image's {previous_bytes}"
    return None


def previous_ready_image(images: Iterable[Image], image: Image) -> Image | None:
    """The instance's newest ready image made before `image`."""
    if image.source_instance_id is None:
        return None
    before = [i for i in ready_images_of(images, image.source_instance_id) if i.created_at < image.created_at]
    return before[0] if before else None


class InstanceStatus(Record):
    """One running instance as `toygres-pipelines status` shows it."""

    instance: str
    newest_image: str | None
    newest_image_age_hours: float | None
    last_drill_started_at: datetime | None
    last_drill_result: str | None
    last_drill_recovery_seconds: float | None
    problems: list[str]
    new: bool = False  # created less than the grace period ago: a missing image or drill is no problem yet
    note: str | None = None  # for a new instance: how old it is and when its windows count

    @property
    def in_windows(self) -> bool:
        return not self.problems


def instance_status(
    instances: Iterable[Instance],
    images: Iterable[Image],
    drills: Iterable[Drill],
    now: datetime,
    backup_window: timedelta,
    drill_window: timedelta,
    grace: timedelta = timedelta(0),
) -> list[InstanceStatus]:
    """Each instance's newest image and last drill; out of its windows when its backup or its newest
    successful drill is too old, or when its newest finished drill failed (the image is not restorable)."""
    drills = list(drills)
    instances, images = fleet_instances(instances, drills), list(images)
    backups = {r.instance: r for r in backup_freshness(instances, images, now, backup_window, grace)}
    drilled = {r.instance: r for r in drill_freshness(instances, drills, now, drill_window, grace)}
    rows = []
    for instance in sorted(instances, key=lambda i: i.k8s_name):
        newest = next(iter(ready_images_of(images, instance.id)), None)
        mine = sorted((d for d in drills if d.source_instance_id == instance.id), key=lambda d: d.started_at)
        last = mine[-1] if mine else None
        finished = [d for d in mine if d.result is not DrillResult.running]
        problems = [f"{r.why}" for r in (backups[instance.k8s_name], drilled[instance.k8s_name]) if not r.fresh]
        if finished and finished[-1].result is DrillResult.failed:
            problems.append("newest drill failed: not restorable")
        rows.append(
            InstanceStatus(
                instance=instance.k8s_name,
                newest_image=newest.name if newest else None,
                newest_image_age_hours=backups[instance.k8s_name].age_hours,
                last_drill_started_at=last.started_at if last else None,
                last_drill_result=last.result.value if last else None,
                last_drill_recovery_seconds=last.recovery_seconds if last else None,
                problems=problems,
                new=is_new(instance, now, grace),
                note=new_note(instance, now, grace) if is_new(instance, now, grace) else None,
            )
        )
    return rows
