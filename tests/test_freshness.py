"""Pure rules: backup and drill freshness, the drill day of an instance, the size anomaly."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from records import Image, ImageState, Instance
from records.drills import Drill, DrillResult, count_differences, seconds_per_gib
from records.freshness import (
    backup_freshness,
    drill_freshness,
    drill_weekday,
    due_drills,
    fleet_instances,
    offenders,
    previous_ready_image,
    size_anomaly,
)
from tests.helpers import drill_record, image_record, instance_record

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def instance(name: str) -> Instance:
    return instance_record(name, created_at=NOW - timedelta(days=30))


def image(source: Instance, hours_ago: float, state: ImageState = ImageState.ready, size: int = 1000) -> Image:
    at = NOW - timedelta(hours=hours_ago)
    ready_at = at if state is ImageState.ready else None
    return image_record(
        source, f"{source.k8s_name}__{hours_ago}", state=state, backup_size_bytes=size, created_at=at, ready_at=ready_at
    )


def drill(source: Instance, days_ago: float, result: DrillResult) -> Drill:
    at = NOW - timedelta(days=days_ago)
    return drill_record(
        source, started_at=at, finished_at=at if result is not DrillResult.running else None, result=result
    )


def test_backup_freshness_names_each_instance_without_a_recent_ready_image():
    fresh, stale, never = instance("fresh"), instance("stale"), instance("never")
    images = [
        image(fresh, 3),
        image(stale, 30),
        image(stale, 2, state=ImageState.failed),  # a failed image proves nothing
        image(never, 1, state=ImageState.creating),
    ]
    report = backup_freshness([stale, fresh, never], images, NOW, timedelta(hours=26))
    assert [(r.instance, r.fresh) for r in report] == [("fresh", True), ("never", False), ("stale", False)]
    assert offenders(report) == ["never (no ready image)", "stale (newest ready image 30.0 h old (window 26.0 h))"]


def test_drill_freshness_counts_only_drills_that_restored_the_instance():
    drilled, failed_only, old = instance("drilled"), instance("failed-only"), instance("old")
    drills = [
        drill(drilled, 2, DrillResult.passed),
        drill(failed_only, 1, DrillResult.failed),
        drill(failed_only, 1, DrillResult.running),
        drill(old, 9, DrillResult.passed),
        drill(old, 3, DrillResult.uncounted),  # restored, counts not compared: still proves restorable
    ]
    report = drill_freshness([drilled, failed_only, old], drills, NOW, timedelta(days=8))
    assert {r.instance: r.fresh for r in report} == {"drilled": True, "failed-only": False, "old": True}
    assert offenders(report) == ["failed-only (no successful drill)"]


def test_drills_spread_over_the_week_and_an_instance_keeps_its_day():
    names = [f"instance-{n}" for n in range(700)]
    days = Counter(drill_weekday(name) for name in names)
    assert set(days) == set(range(7))
    assert all(60 <= count <= 140 for count in days.values()), days
    assert [drill_weekday(n) for n in names] == [drill_weekday(n) for n in names]


def test_due_drills_take_the_newest_ready_image_of_the_instances_due_that_day():
    instances = [instance(f"db-{n}") for n in range(30)]
    images = [image(i, hours) for i in instances for hours in (5, 29)] + [image(instances[0], 1, ImageState.failed)]
    for weekday in range(7):
        due = due_drills(instances, images, weekday)
        assert [i.k8s_name for i, _ in due] == sorted(
            i.k8s_name for i in instances if drill_weekday(i.k8s_name) == weekday
        )
        assert all(img.source_instance_id == i.id and img.name.endswith("__5") for i, img in due)
    assert sum(len(due_drills(instances, images, d)) for d in range(7)) == 30


def test_size_anomaly_warns_below_half_or_above_double_the_previous_image():
    assert size_anomaly(1000, 1000) is None
    assert size_anomaly(500, 1000) is None and size_anomaly(2000, 1000) is None
    assert "less than half" in size_anomaly(499, 1000)
    assert "more than double" in size_anomaly(2001, 1000)
    assert size_anomaly(5, None) is None  # the first image has nothing to compare with


def test_the_previous_ready_image_is_the_instances_newest_before_this_one():
    source, other = instance("src"), instance("other")
    older, old, failed, newest = (
        image(source, 48),
        image(source, 24),
        image(source, 12, ImageState.failed),
        image(source, 1),
    )
    assert previous_ready_image([older, old, failed, newest, image(other, 2)], newest) == old
    assert previous_ready_image([older], older) is None


def test_count_differences_name_each_table_and_both_counts():
    assert count_differences({"public.a": 3, "public.b": 1}, {"public.a": 3, "public.b": 1}) == []
    assert count_differences({"public.a": 3, "public.b": 1}, {"public.a": 2, "public.c": 4}) == [
        "public.a: manifest 3, restored 2",
        "public.b: manifest 1, restored missing",
        "public.c: manifest -, restored 4",
    ]


def test_seconds_per_gib():
    assert seconds_per_gib(10.0, 2 * 1024**3) == 5.0
    assert seconds_per_gib(10.0, None) is None and seconds_per_gib(10.0, 0) is None


def test_instance_status_is_out_of_windows_for_a_stale_backup_a_stale_drill_or_a_failed_newest_drill():
    from records.freshness import instance_status

    good, stale, unproven, broken = instance("good"), instance("stale"), instance("unproven"), instance("broken")
    images = [image(good, 2), image(stale, 40), image(unproven, 2), image(broken, 2)]
    ok = drill(good, 1, DrillResult.passed).model_copy(update={"recovery_seconds": 7.5})
    drills = [
        ok,
        drill(stale, 1, DrillResult.passed),
        drill(unproven, 10, DrillResult.passed),
        drill(broken, 3, DrillResult.passed),
        drill(broken, 1, DrillResult.failed),
    ]
    rows = {
        r.instance: r
        for r in instance_status(
            [good, stale, unproven, broken], images, drills, NOW, timedelta(hours=26), timedelta(days=8)
        )
    }
    assert rows["good"].in_windows and rows["good"].last_drill_recovery_seconds == 7.5
    assert rows["good"].newest_image == "good__2" and rows["good"].newest_image_age_hours == 2.0
    assert rows["good"].last_drill_result == "passed"
    assert not rows["stale"].in_windows and "newest ready image 40.0 h old" in rows["stale"].problems[0]
    assert not rows["unproven"].in_windows and "successful drill" in rows["unproven"].problems[0]
    assert not rows["broken"].in_windows and rows["broken"].problems == ["newest drill failed: not restorable"]


def test_a_drills_scratch_instance_is_no_instance_of_the_fleet_while_the_drill_runs():
    """The scratch instance a drill restored into is running until the drill deletes it: it has no
    image or drill of its own and must not put the fleet out of its windows meanwhile."""
    from records.freshness import instance_status

    good = instance("good")
    running = drill(good, 0, DrillResult.running)
    scratch = instance("drill-abc123").model_copy(update={"run_id": running.run_id})
    drills = [drill(good, 1, DrillResult.passed), running]
    rows = instance_status([good, scratch], [image(good, 2)], drills, NOW, timedelta(hours=26), timedelta(days=8))
    assert [r.instance for r in rows] == ["good"] and rows[0].in_windows
    fleet = fleet_instances([good, scratch], drills)
    assert fleet == [good]  # what the backups_fresh check judges
    assert offenders(drill_freshness([good, scratch], drills, NOW, timedelta(days=8))) == []
