"""The retention policy as pure functions over a synthetic catalogue (no services).

The expected keep sets below are computed by hand, not by code: the comments say why each
image is kept. Europe/Berlin changed from CEST (UTC+2) to CET (UTC+1) on 2026-10-25 and from
CET to CEST on 2026-03-29, so a nightly backup at 22:30 UTC falls on the *next* local day in
summer and on the *same* local day in winter.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from records import (
    Image,
    ImageState,
    ImageType,
    Instance,
    InstanceState,
    RequestState,
    RestoreRequest,
    ValidationFailed,
)
from records.lifecycle import images_in_use
from records.retention import RetentionPolicy
from tests.helpers import image_record
from toygres_pipelines.lifecycle.retention import plan_retention

NOW = datetime(2026, 10, 28, 12, 0, tzinfo=UTC)  # a Wednesday
BERLIN = RetentionPolicy(
    keep_newest=2,
    keep_daily=7,
    keep_weekly=4,
    keep_monthly=12,
    min_age_hours=24,
    failed_window_days=7,
    timezone="Europe/Berlin",
)

INSTANCE_A, INSTANCE_B, INSTANCE_C = (uuid.UUID(int=n) for n in (0xA, 0xB, 0xC))


def image(instance: uuid.UUID, created: datetime, state: ImageState = ImageState.ready, **extra) -> Image:
    name = f"{instance.int:x}__{created:%Y%m%dT%H%M}"
    return image_record(
        None,
        name,
        id=uuid.uuid5(uuid.NAMESPACE_URL, name),
        source_instance_id=instance,
        source_k8s_name=f"inst-{instance.int:x}",
        blob_path=f"images/{name}",
        state=state,
        created_at=created,
        **extra,
    )


def nightly(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 22, 30, tzinfo=UTC)


def catalogue() -> list[Image]:
    first = date(2025, 10, 1)
    a = [image(INSTANCE_A, nightly(first + timedelta(days=n))) for n in range((date(2026, 10, 27) - first).days + 1)]
    pinned = next(i for i in a if i.created_at == nightly(date(2025, 10, 5)))
    a[a.index(pinned)] = pinned.model_copy(update={"pinned": True})
    b = [image(INSTANCE_B, datetime(2025, 10, d, 2, 0, tzinfo=UTC)) for d in range(1, 11)]
    b += [
        image(INSTANCE_B, datetime(2026, 10, 20, 3, 0, tzinfo=UTC), ImageState.failed),  # 8 days: past the window
        image(INSTANCE_B, datetime(2026, 10, 25, 3, 0, tzinfo=UTC), ImageState.failed),  # 3 days: within
    ]
    c = [
        image(INSTANCE_C, datetime(2026, 1, 5, 3, 0, tzinfo=UTC), ImageState.deleting),  # a deletion cut short
        image(INSTANCE_C, datetime(2026, 1, 10, 3, 0, tzinfo=UTC)),
        image(INSTANCE_C, datetime(2026, 2, 10, 3, 0, tzinfo=UTC)),
        image(INSTANCE_C, datetime(2026, 3, 10, 3, 0, tzinfo=UTC), ImageState.failed),
        image(INSTANCE_C, datetime(2026, 10, 28, 11, 0, tzinfo=UTC), ImageState.creating),
        image(INSTANCE_C, datetime(2026, 9, 1, 3, 0, tzinfo=UTC), ImageState.deleted),
    ]
    return a + b + c


def a_image(images: list[Image], day: date) -> Image:
    return next(i for i in images if i.source_instance_id == INSTANCE_A and i.created_at == nightly(day))


OVERRIDES = {
    # B stopped backing up a year ago: keep its last three, no calendar tiers.
    INSTANCE_B: BERLIN.with_override({"keep_newest": 3, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}),
    # C's policy keeps nothing at all: only "never deleted" rules hold.
    INSTANCE_C: BERLIN.with_override({"keep_newest": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}),
}


def test_the_plan_decides_once_on_every_image_it_may_delete_and_leaves_the_others_alone():
    images = catalogue()
    plan = plan_retention(images, default=BERLIN, overrides=OVERRIDES, in_use={}, now=NOW)

    decided = [d.image_id for d in plan.decisions]
    assert len(decided) == len(set(decided))
    left_alone = {ImageState.creating, ImageState.deleted}
    assert set(decided) == {i.id for i in images if i.state not in left_alone}
    assert {d.instance_id for d in plan.decisions} == {INSTANCE_A, INSTANCE_B, INSTANCE_C}


def test_plan_keeps_exactly_the_hand_computed_set():
    images = catalogue()
    in_use_june = a_image(images, date(2026, 6, 15))
    in_use_may = a_image(images, date(2026, 5, 10))
    in_use = {in_use_june.id: "pending restore request r1 (source_image_id)", in_use_may.id: "creating instance x"}
    plan = plan_retention(images, default=BERLIN, overrides=OVERRIDES, in_use=in_use, now=NOW)

    kept_a = {d.created_at.date() for d in plan.kept if d.instance_id == INSTANCE_A}
    assert kept_a == {
        # newest 2: the 27th and the 26th (UTC dates of the 22:30Z backups)
        date(2026, 10, 27),  # newest, daily Oct 27 (23:30 CET), weekly Oct 26-Nov 1, monthly Oct, younger than 24 h
        date(2026, 10, 26),  # newest 2, daily Oct 26 (23:30 CET)
        # daily, local days Oct 22..28. Oct 25 (the DST day) holds two: 00:30 CEST (24th 22:30Z) and
        # 23:30 CET (25th 22:30Z); only the later one is kept. Oct 28 has none.
        date(2026, 10, 25),  # daily Oct 25, weekly Oct 19-25
        date(2026, 10, 23),  # daily Oct 24 (00:30 CEST)
        date(2026, 10, 22),  # daily Oct 23
        date(2026, 10, 21),  # daily Oct 22
        # weekly (ISO weeks, local): Oct 12-18 -> local Oct 18 00:30 CEST; Oct 5-11 -> local Oct 11 00:30
        date(2026, 10, 17),
        date(2026, 10, 10),
        # monthly, local months Nov 2025..Oct 2026: the last local day of each month. In CEST months
        # that is the backup of the day before (22:30Z = 00:30 next day); 30 Sep 22:30Z is 1 Oct locally.
        date(2026, 9, 29),
        date(2026, 8, 30),
        date(2026, 7, 30),
        date(2026, 6, 29),
        date(2026, 5, 30),
        date(2026, 4, 29),
        date(2026, 3, 30),  # CEST since 29 Mar: 31 Mar 00:30
        date(2026, 2, 28),  # CET: 28 Feb 23:30
        date(2026, 1, 31),
        date(2025, 12, 31),
        date(2025, 11, 30),
        # never deleted, whatever the policy says
        date(2025, 10, 5),  # pinned
        date(2026, 6, 15),  # used by a pending restore request
        date(2026, 5, 10),  # used by a creating instance
    }
    a_ready = [i for i in images if i.source_instance_id == INSTANCE_A]
    assert len([d for d in plan.expired if d.instance_id == INSTANCE_A]) == len(a_ready) - len(kept_a)

    by_id = {d.image_id: d for d in plan.decisions}
    assert by_id[a_image(images, date(2026, 10, 24)).id].expired  # 00:30 CEST of the DST day, superseded
    assert by_id[a_image(images, date(2026, 9, 30)).id].expired  # locally 1 Oct, superseded by the 27 Oct one
    assert by_id[a_image(images, date(2026, 9, 29)).id].kept_by == ("monthly 2026-09",)
    assert by_id[a_image(images, date(2026, 10, 25)).id].kept_by == ("daily 2026-10-25", "weekly 2026-W43")
    assert by_id[a_image(images, date(2026, 10, 27)).id].kept_by == (
        "newest ready",
        "newest 2",
        "daily 2026-10-27",
        "weekly 2026-W44",
        "monthly 2026-10",
        "younger than 24 h",
    )
    assert by_id[a_image(images, date(2025, 10, 5)).id].kept_by == ("pinned",)
    assert by_id[in_use_june.id].kept_by == ("in use: pending restore request r1 (source_image_id)",)

    kept_b = {d.created_at for d in plan.kept if d.instance_id == INSTANCE_B}
    assert kept_b == {
        datetime(2025, 10, d, 2, 0, tzinfo=UTC)
        for d in (8, 9, 10)  # newest 3
    } | {datetime(2026, 10, 25, 3, 0, tzinfo=UTC)}  # failed, but within the 7-day window
    failed_old = next(d for d in plan.decisions if d.created_at == datetime(2026, 10, 20, 3, 0, tzinfo=UTC))
    assert failed_old.expired and failed_old.state is ImageState.failed

    # C: its policy keeps nothing, but its newest *ready* image stays (the newer failed one does not count).
    kept_c = {d.created_at for d in plan.kept if d.instance_id == INSTANCE_C}
    assert kept_c == {datetime(2026, 2, 10, 3, 0, tzinfo=UTC)}
    expired_c = {(d.created_at, d.state) for d in plan.expired if d.instance_id == INSTANCE_C}
    assert expired_c == {
        (datetime(2026, 1, 5, 3, 0, tzinfo=UTC), ImageState.deleting),  # retried
        (datetime(2026, 1, 10, 3, 0, tzinfo=UTC), ImageState.ready),
        (datetime(2026, 3, 10, 3, 0, tzinfo=UTC), ImageState.failed),  # failed 7 months ago
    }
    planned = {d.image_id for d in plan.decisions}
    assert not any(i.id in planned for i in images if i.state in (ImageState.creating, ImageState.deleted))


def test_the_timezone_decides_the_day_and_the_month():
    images = catalogue()
    utc = BERLIN.with_override({"timezone": "UTC"})
    plan = plan_retention(images, default=utc, overrides={}, in_use={}, now=NOW)
    by_id = {d.image_id: d for d in plan.decisions}
    assert by_id[a_image(images, date(2026, 10, 24)).id].kept_by == ("daily 2026-10-24",)
    assert by_id[a_image(images, date(2026, 9, 30)).id].kept_by == ("monthly 2026-09",)
    assert by_id[a_image(images, date(2026, 9, 29)).id].expired


def test_nothing_younger_than_the_minimum_age_is_planned_for_deletion():
    images = catalogue()
    zero = BERLIN.with_override(
        {"keep_newest": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "min_age_hours": 24 * 40}
    )
    plan = plan_retention(images, default=zero, overrides={}, in_use={}, now=NOW)
    assert plan.expired
    assert all(NOW - d.created_at >= timedelta(days=40) for d in plan.expired if d.state is ImageState.ready)


def test_images_in_use_name_the_request_or_instance_and_the_field():
    images = catalogue()
    target, by_name = a_image(images, date(2026, 6, 15)), a_image(images, date(2026, 6, 16))
    creating = Instance(
        id=uuid.uuid4(),
        user_name="drill",
        k8s_name="drill-abcde",
        namespace="default",
        postgres_version="16",
        storage_size_gb=1,
        use_load_balancer=False,
        state=InstanceState.creating,
        image_type=ImageType.stock,
        source_image_id=target.id,
        created_at=NOW,
        updated_at=NOW,
    )
    running = creating.model_copy(update={"id": uuid.uuid4(), "state": InstanceState.running})
    requests = [
        RestoreRequest(
            id=uuid.UUID(int=n),
            state=state,
            name="r",
            dns_label="rrr",
            source_image_id=ref,
            created_at=NOW,
            updated_at=NOW,
        )
        for n, state, ref in ((1, RequestState.pending, by_name.name), (2, RequestState.succeeded, images[0].name))
    ]
    used = images_in_use(images, requests, [creating, running])
    assert set(used) == {target.id, by_name.id}
    assert used[target.id] == "source_image_id of creating instance drill-abcde"
    assert used[by_name.id] == f"source_image_id of pending restore request {uuid.UUID(int=1)}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"keep_daily": -1}, "keep_daily: "),
        ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not a known time zone"),
        ({"keep_everything": 1}, "keep_everything: "),
    ],
)
def test_a_bad_override_names_the_field(override, message):
    with pytest.raises(ValidationFailed, match=message):
        BERLIN.with_override(override)


def test_markdown_table_lists_every_planned_image():
    images = catalogue()
    plan = plan_retention(images, default=BERLIN, overrides=OVERRIDES, in_use={}, now=NOW)
    table = plan.markdown(now=NOW)
    lines = table.splitlines()
    assert lines[0] == "| image | instance | state | age | kept by |"
    assert len(lines) == 2 + len(plan.decisions)
    newest = a_image(images, date(2026, 10, 27))
    assert f"| {newest.name} | default/inst-a | ready | 13 h | newest ready, newest 2," in table
    assert f"| {a_image(images, date(2026, 10, 24)).name} | default/inst-a | ready | 3 d | expired |" in table


# ---- the default policy from the environment, the job and its schedule -------------------------


def test_default_policy_comes_from_toygres_retention_variables():
    from toygres_pipelines.settings import Settings

    settings = Settings.from_env(
        {
            "TOYGRES_RETENTION_KEEP_DAILY": "14",
            "TOYGRES_RETENTION_TIMEZONE": "Europe/Berlin",
            "TOYGRES_NIGHTLY_CRON": "",
        }
    )
    assert settings.retention == RetentionPolicy(keep_daily=14, timezone="Europe/Berlin")
    assert Settings.from_env({}).retention == RetentionPolicy()
    with pytest.raises(ValueError, match="TOYGRES_RETENTION_KEEP_WEEKLY: 'many'"):
        Settings.from_env({"TOYGRES_RETENTION_KEEP_WEEKLY": "many"})
    with pytest.raises(ValueError, match="TOYGRES_RETENTION_TIMEZONE: 'Berlin' is not a known time zone"):
        Settings.from_env({"TOYGRES_RETENTION_TIMEZONE": "Berlin"})


def test_daily_schedule_runs_retention_for_real_and_the_launchpad_defaults_to_a_dry_run():
    import dagster as dg

    from tests.helpers import schedule_named
    from toygres_pipelines.domains import domain_definitions
    from toygres_pipelines.lifecycle.retention_job import RetentionConfig
    from toygres_pipelines.settings import Settings

    automation = domain_definitions(Settings(retention_cron="15 5 * * *"))
    schedule = schedule_named(automation, "retention_daily")
    assert schedule.cron_schedule == "15 5 * * *" and schedule.job_name == "retention"
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING
    [request] = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    assert retention_config_of(request.run_config) == {"dry_run": False}
    assert RetentionConfig().dry_run is True
    assert "retention" in {job.name for job in automation.jobs or []}


def test_lifecycle_jobs_are_in_the_code_location():
    from toygres_pipelines.definitions import defs

    for job in ("retention", "delete_image", "delete_instance"):
        assert defs.get_job_def(job).name == job
    assert {s.name: s.job_name for s in defs.schedules}["retention_daily"] == "retention"


# ---- whatever the policy and the catalogue: the rules that always hold -----------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from toygres_pipelines.lifecycle.retention_job import retention_config_of  # noqa: E402

policies = st.builds(
    RetentionPolicy,
    keep_newest=st.integers(0, 5),
    keep_daily=st.integers(0, 10),
    keep_weekly=st.integers(0, 6),
    keep_monthly=st.integers(0, 14),
    min_age_hours=st.integers(0, 24 * 30),
    failed_window_days=st.integers(0, 30),
    timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Pacific/Chatham", "Asia/Kolkata"]),
)
entries = st.lists(
    st.tuples(
        st.sampled_from([INSTANCE_A, INSTANCE_B]),
        st.integers(0, 400 * 24 * 60),  # minutes before NOW
        st.sampled_from([ImageState.ready] * 4 + [ImageState.failed, ImageState.corrupt, ImageState.creating]),
        st.booleans(),  # pinned
        st.booleans(),  # in use
    ),
    max_size=60,
    unique_by=lambda e: (e[0], e[1]),
)


@settings(max_examples=200, deadline=None)
@given(policy=policies, drawn=entries)
def test_never_deleted_whatever_the_policy(policy, drawn):
    images = [
        image(instance, NOW - timedelta(minutes=minutes), state, pinned=pinned and state is ImageState.ready)
        for instance, minutes, state, pinned, _ in drawn
    ]
    in_use = {i.id: "test" for i, (*_, used) in zip(images, drawn, strict=True) if used}
    plan = plan_retention(images, default=policy, overrides={}, in_use=in_use, now=NOW)
    expired = {d.image_id for d in plan.expired}
    for instance in (INSTANCE_A, INSTANCE_B):
        ready = [i for i in images if i.source_instance_id == instance and i.state is ImageState.ready]
        if ready:
            assert max(ready, key=lambda i: i.created_at).id not in expired
    for i in images:
        if i.pinned or i.id in in_use or i.state in (ImageState.creating, ImageState.corrupt):
            assert i.id not in expired
        if i.state is ImageState.ready and NOW - i.created_at < timedelta(hours=policy.min_age_hours):
            assert i.id not in expired
        if i.state is ImageState.failed and NOW - i.created_at < timedelta(days=policy.failed_window_days):
            assert i.id not in expired
    kept_ready = [d for d in plan.kept if d.state is ImageState.ready]
    for instance in (INSTANCE_A, INSTANCE_B):
        ready = sorted(
            (i for i in images if i.source_instance_id == instance and i.state is ImageState.ready),
            key=lambda i: i.created_at,
            reverse=True,
        )
        assert {i.id for i in ready[: policy.keep_newest]} <= {d.image_id for d in kept_ready}


@pytest.mark.parametrize(
    "spell", [str.upper, lambda s: "{" + s + "}", lambda s: "urn:uuid:" + s, lambda s: s.replace("-", "")]
)
def test_an_image_is_in_use_whatever_spelling_of_its_id_a_request_uses(spell):
    images = catalogue()
    target = a_image(images, date(2026, 6, 15))
    request = RestoreRequest(
        id=uuid.UUID(int=1),
        state=RequestState.pending,
        name="r",
        dns_label="rrr",
        source_image_id=spell(str(target.id)),
        created_at=NOW,
        updated_at=NOW,
    )
    assert images_in_use(images, [request], []) == {
        target.id: f"source_image_id of pending restore request {uuid.UUID(int=1)}"
    }
