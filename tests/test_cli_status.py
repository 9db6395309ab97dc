"""`toygres-pipelines status` against a real CMS: per instance, newest image and last drill; a
non-zero exit when any instance is out of its windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from records.drills import DrillResult
from tests import helpers
from tests.helpers import cli_runner
from toygres_pipelines import cli
from toygres_pipelines.cli.exits import EXIT_OUT_OF_WINDOWS

pytestmark = pytest.mark.integration


@pytest.fixture
def run(cms, monkeypatch, capsys):
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    for name in ("BACKUP_FRESHNESS_HOURS", "DRILL_FRESHNESS_DAYS", "NEW_INSTANCE_GRACE_HOURS"):
        monkeypatch.delenv(f"TOYGRES_{name}", raising=False)

    return cli_runner(capsys)


def test_a_new_instance_is_new_not_out_of_windows_until_its_grace_period_ends(run, cms, source, monkeypatch):
    """A just-registered (or just-restored) instance has no image and no drill yet: it is `new`
    (exit 0) for TOYGRES_NEW_INSTANCE_GRACE_HOURS, then its windows count."""
    code, out, err = run("status")
    assert code == 0, out + err
    [line] = [line for line in out.splitlines() if line.startswith(source.k8s_name)]
    assert line.rstrip().endswith("new (created 0.0 h ago; windows count after 26 h)"), line
    [row] = json.loads(run("status", "--json")[1])
    assert (row["new"], row["in_windows"], row["problems"]) == (True, True, [])
    with psycopg.connect(cms.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE toygres_cms.instances SET created_at = %s WHERE id = %s",
            (datetime.now(UTC) - timedelta(hours=27), source.id),
        )
    code, out, _ = run("status")
    assert code == EXIT_OUT_OF_WINDOWS and "no ready image" in out


def test_status_shows_newest_image_and_last_drill_and_fails_out_of_windows(run, cms, source, monkeypatch):
    monkeypatch.setenv("TOYGRES_NEW_INSTANCE_GRACE_HOURS", "0")  # no grace: windows count from the start
    code, out, _ = run("status")
    assert code == EXIT_OUT_OF_WINDOWS
    assert source.k8s_name in out and "no ready image" in out

    image = helpers.catalogued_image(cms, source, f"{source.k8s_name}__status")
    drill = cms.drills.start(image.id, source.id, "run-status-1")
    cms.drills.finish(drill.id, DrillResult.passed, "ok", recovery_seconds=7.25)
    code, out, _ = run("status")
    assert code == 0, out
    [line] = [line for line in out.splitlines() if line.startswith(source.k8s_name)]
    assert image.name in line and "passed" in line and "7.2" in line and "ok" in line

    code, out, _ = run("status", "--json")
    [row] = json.loads(out)
    assert row["instance"] == source.k8s_name and row["in_windows"] is True
    assert row["last_drill_recovery_seconds"] == 7.25

    with psycopg.connect(cms.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE toygres_cms.images SET ready_at = %s WHERE id = %s",
            (datetime.now(UTC) - timedelta(hours=30), image.id),
        )
    code, out, _ = run("status")
    assert code == EXIT_OUT_OF_WINDOWS and "30.0 h old" in out
    monkeypatch.setenv("TOYGRES_BACKUP_FRESHNESS_HOURS", "48")  # the same setting the check uses
    assert run("status")[0] == 0


def test_status_with_a_bad_window_setting_exits_2_naming_the_variable(run, monkeypatch):
    monkeypatch.setenv("TOYGRES_BACKUP_FRESHNESS_HOURS", "abc")
    code, out, err = run("status")
    assert code == 2 and out == "", (code, err)
    assert err == "error: TOYGRES_BACKUP_FRESHNESS_HOURS: 'abc' must be a number more than 0 and at most 8784\n", err
    assert "unexpected" not in err


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-1", "0", "-inf"])
@pytest.mark.parametrize(
    ("variable", "allowed"),
    [
        ("TOYGRES_BACKUP_FRESHNESS_HOURS", "more than 0 and at most 8784"),
        ("TOYGRES_DRILL_FRESHNESS_DAYS", "more than 0 and at most 366"),
    ],
)
def test_status_with_an_extreme_window_setting_exits_2_naming_the_variable_and_the_range(
    run, monkeypatch, variable, allowed, value
):
    monkeypatch.setenv(variable, value)
    code, out, err = run("status")
    assert (code, out) == (2, ""), err
    assert err == f"error: {variable}: {value!r} must be a number {allowed}\n"


def test_the_top_level_help_lists_every_exit_code(capsys):
    """`toygres-pipelines --help` names exit 4 (status out of windows) beside 0, 1, 2 and 3."""
    assert cli.main(["--help"]) == 0
    epilog = " ".join(capsys.readouterr().out.split()).split("Exit codes:", 1)[1]
    for code in ("0 ok", "1 unexpected", "2 invalid", "3 CMS", f"{EXIT_OUT_OF_WINDOWS} status:"):
        assert code in epilog, epilog


@pytest.mark.parametrize("command", ["status", "retention"])
def test_every_command_reading_the_settings_refuses_a_bad_one_alike(run, source, monkeypatch, command):
    """status, retention and retention-plan read the automation settings: a bad variable is bad
    input (exit 2, the variable and its rule), whichever command meets it."""
    monkeypatch.setenv("TOYGRES_DRILL_FRESHNESS_DAYS", "inf")
    argv = [command] if command == "status" else [command, source.k8s_name]
    code, out, err = run(*argv)
    assert (code, out, err) == (
        2,
        "",
        "error: TOYGRES_DRILL_FRESHNESS_DAYS: 'inf' must be a number more than 0 and at most 366\n",
    )


def test_the_status_help_names_the_windows_as_the_settings_declare_them(capsys):
    from toygres_pipelines.settings import Settings as AutomationSettings

    assert cli.main(["status", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for field in ("backup_freshness_hours", "drill_freshness_days"):
        default = AutomationSettings.model_fields[field].default
        assert f"{AutomationSettings.env_name(field)} (default {default:g})" in text, text
