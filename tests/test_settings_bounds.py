"""Every numeric setting read from the environment is bounded: `inf`, `nan`, `1e400` and negatives
are refused naming the variable and the allowed range (issue 19)."""

from __future__ import annotations

import re

import pytest

from records import ValidationFailed
from toygres_pipelines.resources_from_env import blob_from_env
from toygres_pipelines.settings import Settings

NUMERIC = [name for name, field in Settings.model_fields.items() if field.annotation in (int, float)]
EXTREMES = ["inf", "nan", "1e400", "-1", "99999999999999999999999"]


def test_every_numeric_setting_is_declared_with_bounds():
    assert len(NUMERIC) == 12  # rpo_target_seconds (issue 24) the tenth; the request listener's two (issue 23)
    for name in NUMERIC:
        kinds = {type(m).__name__ for m in Settings.model_fields[name].metadata}
        assert kinds & {"Ge", "Gt"} and "Le" in kinds, name


@pytest.mark.parametrize("value", EXTREMES)
@pytest.mark.parametrize("field", NUMERIC)
def test_an_extreme_setting_names_the_variable_and_the_range(field, value):
    variable = Settings.env_name(field)
    with pytest.raises(ValueError) as refused:
        Settings.from_env({variable: value})
    assert re.fullmatch(
        rf"{variable}: {re.escape(repr(value))} must be a (whole )?number (from -?\d+ to|more than 0 and at most) \d+",
        str(refused.value),
    ), str(refused.value)


@pytest.mark.parametrize(("value", "rule"), [("0", "more than 0 and at most 86400"), ("86401", "more than 0")])
def test_the_rpo_target_is_a_bounded_setting(value, rule):
    assert Settings().rpo_target_seconds == 60
    assert Settings.from_env({"TOYGRES_RPO_TARGET_SECONDS": "15"}).rpo_target_seconds == 15
    with pytest.raises(ValueError, match=f"TOYGRES_RPO_TARGET_SECONDS: {value!r} must be a number {rule}"):
        Settings.from_env({"TOYGRES_RPO_TARGET_SECONDS": value})


@pytest.mark.parametrize("value", ["inf", "1e400", "-1", "0", "3601", "abc"])
def test_the_transfer_stall_setting_is_bounded_and_named(monkeypatch, value):
    monkeypatch.setenv("TOYGRES_TRANSFER_STALL_SECONDS", value)
    monkeypatch.setenv("TOYGRES_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    with pytest.raises(ValidationFailed) as refused:
        blob_from_env()
    assert str(refused.value) == f"TOYGRES_TRANSFER_STALL_SECONDS: {value!r} must be a whole number from 1 to 3600"


@pytest.mark.parametrize(
    "field", ["keep_newest", "keep_daily", "keep_weekly", "keep_monthly", "min_age_hours", "failed_window_days"]
)
def test_a_huge_retention_setting_is_refused_not_overflowed(field):
    from records.retention import RetentionPolicy

    with pytest.raises(ValueError) as refused:
        Settings.from_env({f"TOYGRES_RETENTION_{field.upper()}": str(10**30)})
    assert str(refused.value).startswith(f"TOYGRES_RETENTION_{field.upper()}: ")
    assert "less than or equal to" in str(refused.value)
    with pytest.raises(ValidationFailed, match=f"{field}: "):
        RetentionPolicy.checked({field: 10**30})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOYGRES_NIGHTLY_CRON", "bogus"),
        ("TOYGRES_RETENTION_CRON", "61 * * * *"),
        ("TOYGRES_FRESHNESS_CRON", "0 5 * * * * *"),
        ("TOYGRES_DRILL_CRON", "@reboot"),
        ("TOYGRES_NIGHTLY_TIMEZONE", "Mars/Olympus"),
        ("TOYGRES_NIGHTLY_TIMEZONE", "../../etc/passwd"),
    ],
)
def test_a_bad_cron_or_time_zone_is_refused_naming_the_variable_before_any_schedule_is_built(variable, value):
    """Not Dagster's DagsterInvalidDefinitionError while the code location loads, naming a schedule
    and no setting: from_env refuses it, naming the variable, the value and the rule."""
    from toygres_pipelines.domains import domain_definitions

    try:
        settings = Settings.from_env({variable: value})
    except ValueError as refused:
        assert str(refused).startswith(f"{variable}: {value!r}: "), str(refused)
        rule = str(refused).removeprefix(f"{variable}: {value!r}: ")
        expected = "an IANA time zone name" if variable.endswith("TIMEZONE") else "a cron expression of 5 fields"
        assert rule.startswith(f"must be {expected}"), rule
        return
    domain_definitions(settings)
    pytest.fail(f"{variable}={value!r} was accepted")
