"""What the official Dagster Helm chart (1.13) writes into its instance ConfigMap (`dagster.yaml`)
from deploy/kubernetes/dagster-values.yaml, for the tests: no helm binary exists here.

Followed, block by block, from the chart's sources (helm/dagster/templates/ in dagster-io/dagster):
  configmap-instance.yaml                     the document: which block, when
  helpers/instance/_postgresql.tpl            postgres_db (run, event-log and schedule storage)
  helpers/instance/_run-launcher.tpl          dagsterYaml.runLauncher.k8s
  helpers/instance/_run-coordinator.tpl       dagsterYaml.runCoordinator.queued / .custom
  helpers/instance/_scheduler.tpl             dagsterYaml.scheduler.daemon
  helpers/instance/_compute-log-manager.tpl   NoOpComputeLogManager (the chart's default type)
  helpers/instance/_concurrency.tpl           concurrency.pools / concurrency.runs
  helpers/_helpers.tpl                        dagster.postgresql.host, dagster.serviceAccountName
Where the stored sources differ by version, the newest read is followed (the k8s run launcher block
with labels, run_k8s_config, fail_pod_on_run_failure). The `concurrency:` block is rendered from
_concurrency.tpl under `concurrency.enabled`; the configmap version read here predates that include,
so its placement is assumed, not copied (compare with `helm template`, docs/kubernetes.md).
Only the value paths the project's values use are rendered; anything else in `values` is an error
here (so a new setting is added to this renderer, not silently dropped).
"""

from __future__ import annotations

from typing import Any

RELEASE = "dagster"  # `helm upgrade --install dagster ...` (deploy/kubernetes/dagster-values.yaml)
NAMESPACE = "toygres"


class UnrenderedValue(ValueError):
    pass


def postgres_db(values: dict[str, Any]) -> dict[str, Any]:
    pg = values["postgresql"]
    if pg.get("enabled", False):
        raise UnrenderedValue("postgresql.enabled: the chart's demo PostgreSQL is not rendered here")
    db: dict[str, Any] = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams") or {},
    }
    if pg.get("postgresqlScheme"):
        db["scheme"] = pg["postgresqlScheme"]
    return {"postgres_db": db}


def service_account_name(values: dict[str, Any]) -> str:
    return (
        values.get("global", {}).get("serviceAccountName")
        or values.get("serviceAccount", {}).get("name")
        or RELEASE  # dagster.fullname
    )


def run_launcher(values: dict[str, Any]) -> dict[str, Any]:
    launcher = values["runLauncher"]
    if launcher["type"] != "K8sRunLauncher":
        raise UnrenderedValue(f"runLauncher.type: {launcher['type']!r} is not rendered here")
    k8s = launcher["config"]["k8sRunLauncher"]
    global_values = values.get("global") or {}
    config: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s.get("imagePullPolicy", "Always"),
        "service_account_name": service_account_name(values),
        "dagster_home": global_values.get("dagsterHome", "/opt/dagster/dagster_home"),
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": global_values.get("postgresqlSecretName") or f"{RELEASE}-postgresql-secret",
    }
    for key, name in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        if k8s.get(key):
            config[name] = [entry["name"] for entry in k8s[key] if "name" in entry]
    for key, name in (
        ("envVars", "env_vars"),
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
        ("schedulerName", "scheduler_name"),
        ("securityContext", "security_context"),
    ):
        if k8s.get(key):
            config[name] = k8s[key]
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    if k8s.get("runK8sConfig"):
        config["run_k8s_config"] = {
            name: k8s["runK8sConfig"][key]
            for key, name in (
                ("containerConfig", "container_config"),
                ("podSpecConfig", "pod_spec_config"),
                ("podTemplateSpecMetadata", "pod_template_spec_metadata"),
                ("jobSpecConfig", "job_spec_config"),
                ("jobMetadata", "job_metadata"),
            )
            if k8s["runK8sConfig"].get(key)
        }
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def run_coordinator(values: dict[str, Any]) -> dict[str, Any] | None:
    daemon = values.get("dagsterDaemon", {})
    coordinator = daemon.get("runCoordinator", {})
    if not (daemon.get("enabled") and coordinator.get("enabled")):
        return None
    if coordinator["type"] == "CustomRunCoordinator":
        custom = coordinator["config"]["customRunCoordinator"]
        return {"module": custom["module"], "class": custom["class"], "config": custom.get("config")}
    if coordinator["type"] == "QueuedRunCoordinator":
        queued = coordinator.get("config", {}).get("queuedRunCoordinator") or {}
        config = {
            name: queued[key]
            for key, name in (
                ("maxConcurrentRuns", "max_concurrent_runs"),
                ("tagConcurrencyLimits", "tag_concurrency_limits"),
                ("dequeueIntervalSeconds", "dequeue_interval_seconds"),
            )
            if queued.get(key)
        }
        return {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            **({"config": config} if config else {}),
        }
    raise UnrenderedValue(f"dagsterDaemon.runCoordinator.type: {coordinator['type']!r} is not rendered here")


def concurrency(values: dict[str, Any]) -> dict[str, Any] | None:
    section = values.get("concurrency") or {}
    if not section.get("enabled"):
        return None
    pools_in, runs_in = section.get("pools") or {}, section.get("runs") or {}
    out: dict[str, Any] = {}
    pools = {
        name: pools_in[key]
        for key, name in (
            ("defaultLimit", "default_limit"),
            ("granularity", "granularity"),
            ("opGranularityRunBuffer", "op_granularity_run_buffer"),
        )
        if pools_in.get(key) is not None
    }
    if pools:
        out["pools"] = pools
    runs: dict[str, Any] = {}
    if runs_in.get("maxConcurrentRuns") is not None:
        runs["max_concurrent_runs"] = runs_in["maxConcurrentRuns"]
    if runs_in.get("tagConcurrencyLimits"):
        runs["tag_concurrency_limits"] = [
            {"key": limit["key"], **({"value": limit["value"]} if limit.get("value") else {}), "limit": limit["limit"]}
            for limit in runs_in["tagConcurrencyLimits"]
        ]
    if runs:
        out["runs"] = runs
    return out


def run_monitoring(values: dict[str, Any]) -> dict[str, Any] | None:
    daemon = values.get("dagsterDaemon", {})
    monitoring = daemon.get("runMonitoring", {})
    if not (daemon.get("enabled") and monitoring.get("enabled")):
        return None
    out = {"enabled": True, "start_timeout_seconds": monitoring["startTimeoutSeconds"]}
    for key, name in (
        ("cancelTimeoutSeconds", "cancel_timeout_seconds"),
        ("maxResumeRunAttempts", "max_resume_run_attempts"),
    ):
        if monitoring.get(key) is not None:
            out[name] = monitoring[key]
    out["poll_interval_seconds"] = monitoring["pollIntervalSeconds"]
    out["free_slots_after_run_end_seconds"] = monitoring["freeSlotsAfterRunEndSeconds"]
    return out


def retention(values: dict[str, Any]) -> dict[str, Any] | None:
    section = values.get("retention") or {}
    if not section.get("enabled"):
        return None
    return {
        kind: {"purge_after_days": section[kind]["purgeAfterDays"]}
        for kind in ("sensor", "schedule")
        if section.get(kind)
    }


def instance_yaml(values: dict[str, Any]) -> dict[str, Any]:
    """The `dagster.yaml` of the chart's `<release>-instance` ConfigMap, as a dict."""
    storage_config = postgres_db(values)
    scheduler_type = values.get("scheduler", {}).get("type", "DagsterDaemonScheduler")
    if scheduler_type != "DagsterDaemonScheduler":
        raise UnrenderedValue(f"scheduler.type: {scheduler_type!r} is not rendered here")
    compute_logs_type = values.get("computeLogManager", {}).get("type", "NoOpComputeLogManager")
    if compute_logs_type != "NoOpComputeLogManager":
        raise UnrenderedValue(f"computeLogManager.type: {compute_logs_type!r} is not rendered here")
    document: dict[str, Any] = {
        "scheduler": {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": storage_config,
        },
        "run_launcher": run_launcher(values),
        "run_storage": {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": storage_config,
        },
        "event_log_storage": {
            "module": "dagster_postgres.event_log",
            "class": "PostgresEventLogStorage",
            "config": storage_config,
        },
    }
    if (coordinator := run_coordinator(values)) is not None:
        document["run_coordinator"] = coordinator
    document["compute_logs"] = {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
    if (monitoring := run_monitoring(values)) is not None:
        document["run_monitoring"] = monitoring
    document["telemetry"] = {"enabled": values.get("telemetry", {}).get("enabled", True)}
    if (kept := retention(values)) is not None:
        document["retention"] = kept
    if (limits := concurrency(values)) is not None:
        document["concurrency"] = limits
    return document


def configurable_classes(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(block, module, class) of every block that names a class to load."""
    return [
        (block, value["module"], value["class"])
        for block, value in document.items()
        if isinstance(value, dict) and "module" in value and "class" in value
    ]
