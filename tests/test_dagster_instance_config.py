"""The Dagster instance the Helm chart makes from deploy/kubernetes/dagster-values.yaml loads in the
project's own environment (the project image): every module it names imports, each block's config
is what its class accepts, and the storages and the run coordinator start against a real PostgreSQL.
The dev stack and the daemon tests run the same storages and coordinator (deploy/local/dagster.yaml)."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.storage.dagster_run import DagsterRun, RunsFilter
from dagster._core.utils import make_new_run_id
from psycopg.conninfo import conninfo_to_dict

from resources.platform.base import PROJECT_DIR
from tests.dagster_chart import configurable_classes, instance_yaml

VALUES = PROJECT_DIR / "deploy" / "kubernetes" / "dagster-values.yaml"
LOCAL_INSTANCE = PROJECT_DIR / "deploy" / "local" / "dagster.yaml"


def chart_values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def test_every_class_the_chart_instance_names_imports_and_takes_its_config(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "set-from-the-chart-secret")  # the chart's pods get it from the Secret
    document = instance_yaml(chart_values())
    named = configurable_classes(document)
    assert {block for block, _, _ in named} >= {
        "run_storage",
        "event_log_storage",
        "schedule_storage",
        "run_launcher",
        "run_coordinator",
        "scheduler",
        "compute_logs",
    }
    for block, module, class_name in named:
        klass = getattr(importlib.import_module(module), class_name)  # ModuleNotFoundError: not installed
        config = document[block].get("config")
        if config is not None:
            result = process_config(klass.config_type(), config)
            assert result.success, f"{block} ({module}.{class_name}): {[e.message for e in result.errors or []]}"


def test_the_chart_instance_loads_against_postgresql(fresh_database, tmp_path: Path, monkeypatch):
    """The same document with the storage server a user would set in the values (here: the test
    server, without TLS), loaded with DagsterInstance: the run, event-log and schedule storages are
    dagster_postgres', their schema is created, and the run coordinator is the project's."""
    values = chart_values()
    server = conninfo_to_dict(fresh_database)
    values["postgresql"].update(
        postgresqlHost=server["host"],
        postgresqlUsername=server["user"],
        postgresqlDatabase=server["dbname"],
        postgresqlParams={},
        service={"port": int(server["port"])},
    )
    document = instance_yaml(values)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", server["password"])
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from toygres_pipelines.run_coordinator import TaggingRunCoordinator

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, TaggingRunCoordinator)
        assert instance.get_runs(RunsFilter()) == []
        # Storing an event is what every run does first (PostgresEventLogStorage also NOTIFYs):
        # under SQLAlchemy 2.1 a bare postgresql:// scheme picks psycopg 3, which fails it.
        run = instance.add_run(DagsterRun(job_name="probe", run_id=make_new_run_id()))
        instance.report_engine_event("probe", run)
        assert [entry.message for entry in instance.all_logs(run.run_id)] == ["probe"]
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {(limit["key"], str(limit.get("value"))) for limit in limits} >= {
            ("toygres/kind", "backup"),
            ("toygres/kind", "restore"),
        }


def test_the_local_instance_runs_the_chart_storages_and_coordinator():
    """One topology: deploy/local/dagster.yaml (make dev, the daemon tests) names the chart's classes."""
    chart = instance_yaml(chart_values())
    local = yaml.safe_load(LOCAL_INSTANCE.read_text())
    for block in ("run_storage", "event_log_storage", "schedule_storage", "run_coordinator"):
        assert (local[block]["module"], local[block]["class"]) == (chart[block]["module"], chart[block]["class"]), block
        if block != "run_coordinator":
            assert local[block]["config"]["postgres_db"]["scheme"] == chart[block]["config"]["postgres_db"]["scheme"]
    # DefaultRunLauncher: the local stand-in for K8sRunLauncher, one process per run
    assert (local["run_launcher"]["module"], local["run_launcher"]["class"]) == (
        "dagster._core.launcher",
        "DefaultRunLauncher",
    )
    assert "storage" not in local  # no SQLite anywhere


def test_the_chart_instance_renderer_fails_on_values_it_does_not_render():
    values = copy.deepcopy(chart_values())
    values["postgresql"]["enabled"] = True
    with pytest.raises(ValueError, match="postgresql.enabled"):
        instance_yaml(values)


def test_the_webserver_and_the_daemon_get_the_cms_dsn_for_the_run_coordinator_and_no_other_secret():
    # The coordinator checks every submitted request against the CMS (toygres_pipelines/run_coordinator.py).
    from toygres_pipelines.run_coordinator import CMS_DSN_ENV

    values = chart_values()
    code_secret = values["dagster-user-deployments"]["deployments"][0]["envSecrets"][0]["name"]
    for component in ("dagsterWebserver", "dagsterDaemon"):
        env = values[component].get("env")
        assert env == [{"name": CMS_DSN_ENV, "valueFrom": {"secretKeyRef": {"name": code_secret, "key": CMS_DSN_ENV}}}]
        assert not values[component].get("envSecrets"), f"{component} must not get the whole Secret"
