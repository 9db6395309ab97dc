"""The retention plan: pure functions from the image catalogue and the policies to what is kept
(and by which rule) and what has expired. The `retention` job executes the plan."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta

from pydantic import BaseModel, ConfigDict

from records import Image, ImageState
from records.lifecycle import group_of
from records.retention import RetentionPolicy

# What a plan looks at: ready images go through the tiers, failed ones through the failed-image
# window, deleting ones (a deletion cut short) are finished. Creating and deleted rows are left alone.
PLANNED_STATES = (ImageState.ready, ImageState.corrupt, ImageState.failed, ImageState.deleting)
CORRUPT_KEPT = "corrupt: reverify_image or delete-image decides"


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    image_id: uuid.UUID
    image_name: str
    instance_id: uuid.UUID | None
    instance: str
    state: ImageState
    created_at: datetime
    kept_by: tuple[str, ...]

    @property
    def expired(self) -> bool:
        return not self.kept_by


class RetentionPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    decisions: list[Decision]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if not d.expired]

    @property
    def expired(self) -> list[Decision]:
        return [d for d in self.decisions if d.expired]

    def markdown(self, now: datetime) -> str:
        lines = ["| image | instance | state | age | kept by |", "|---|---|---|---|---|"]
        for d in self.decisions:
            why = ", ".join(d.kept_by) if d.kept_by else "expired"
            lines.append(f"| {d.image_name} | {d.instance} | {d.state.value} | {age(now - d.created_at)} | {why} |")
        return "\n".join(lines)


def age(elapsed: timedelta) -> str:
    hours = elapsed.total_seconds() / 3600
    return f"{int(hours)} h" if hours < 48 else f"{elapsed.days} d"


def plan_retention(
    images: Iterable[Image],
    *,
    default: RetentionPolicy,
    overrides: Mapping[uuid.UUID, RetentionPolicy],
    in_use: Mapping[uuid.UUID, str],
    now: datetime,
) -> RetentionPlan:
    groups: dict[str, list[Image]] = defaultdict(list)
    for image in images:
        if image.state in PLANNED_STATES:
            groups[group_of(image)].append(image)
    decisions: list[Decision] = []
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda i: (i.created_at, str(i.id)), reverse=True)
        instance_id = members[0].source_instance_id
        policy = overrides.get(instance_id, default) if instance_id else default
        reasons = keep_reasons(members, policy, in_use, now)
        decisions += [
            Decision(
                image_id=i.id,
                image_name=i.name,
                instance_id=i.source_instance_id,
                instance=f"{i.source_namespace}/{i.source_k8s_name}",
                state=i.state,
                created_at=i.created_at,
                kept_by=tuple(reasons[i.id]),
            )
            for i in members
        ]
    return RetentionPlan(decisions=decisions)


def keep_reasons(
    newest_first: list[Image], policy: RetentionPolicy, in_use: Mapping[uuid.UUID, str], now: datetime
) -> dict[uuid.UUID, list[str]]:
    reasons: dict[uuid.UUID, list[str]] = defaultdict(list)
    ready = [i for i in newest_first if i.state is ImageState.ready]
    if ready:
        reasons[ready[0].id].append("newest ready")
    for image in ready[: policy.keep_newest]:
        reasons[image.id].append(f"newest {policy.keep_newest}")
    zone = policy.zone
    today = now.astimezone(zone).date()
    for tier, count in (("daily", policy.keep_daily), ("weekly", policy.keep_weekly), ("monthly", policy.keep_monthly)):
        index, label = TIERS[tier]
        seen: set[int] = set()
        for image in ready:
            day = image.created_at.astimezone(zone).date()
            period = index(day)
            if period in seen or index(today) - period >= count:
                continue
            seen.add(period)
            reasons[image.id].append(f"{tier} {label(day)}")
    min_age = timedelta(hours=policy.min_age_hours)
    window = timedelta(days=policy.failed_window_days)
    for image in newest_first:
        if image.state in (ImageState.ready, ImageState.corrupt) and now - image.created_at < min_age:
            reasons[image.id].append(f"younger than {policy.min_age_hours} h")
        if image.pinned:
            reasons[image.id].append("pinned")
        if image.id in in_use:
            reasons[image.id].append(f"in use: {in_use[image.id]}")
        if image.state is ImageState.corrupt:
            reasons[image.id].append(CORRUPT_KEPT)
        if image.state is ImageState.failed and now - image.created_at < window:
            reasons[image.id].append(f"failed, within the {policy.failed_window_days} d window")
    return reasons


# Each calendar tier: a running number of the period a local date falls in, and its label.
TIERS: dict[str, tuple[Callable[[date], int], Callable[[date], str]]] = {
    "daily": (lambda d: d.toordinal(), lambda d: d.isoformat()),
    "weekly": (lambda d: (d.toordinal() - d.weekday()) // 7, lambda d: "{}-W{:02d}".format(*d.isocalendar()[:2])),
    "monthly": (lambda d: d.year * 12 + d.month, lambda d: f"{d:%Y-%m}"),
}
