"""Issue 15: what would stop the first real AKS backup, and a public Postgres without TLS.

Rendered manifests (validated against the official schemas like test_k8s_manifests.py), the
settings read from the environment, and the platform against the API stand-in."""

from __future__ import annotations

import base64
import ipaddress
import os
import pwd
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from k8s_fake_cluster import running_cluster
from pydantic import SecretStr, ValidationError
from test_k8s_manifests import job_spec, validate

from records import Endpoints, InstanceRef, ValidationFailed
from resources.platform import k8s_manifests as m
from resources.platform.base import SCRIPTS_DIR, DeploySpec, JobKind, JobSpec, PlatformError
from resources.platform.k8s_settings import SUPPORTED_MAJORS
from resources.platform.kubernetes import KubernetesPlatform
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import (
    LocalPostgresServer,
    as_service_user,
    free_port,
    give_to_service_user,
    postgres_bindir,
    run_as_user,
    run_checked,
    service_env,
)
from toygres_pipelines.dev.stack import remove_tree
from toygres_pipelines.resources_from_env import kubernetes_platform_from_env
from toygres_pipelines.shared.connections import connection_strings

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(60)]

DIGEST = "sha256:" + "0123456789abcdef" * 4
JOB_IMAGES = {v: f"registry.example/toygres-job@{DIGEST}" for v in ("14", "15", "16", "17")}
INSTANCE = InstanceRef(k8s_name="orders-ab12c", namespace="toygres-instances")


def platform(**over) -> KubernetesPlatform:
    return KubernetesPlatform(**{"job_images": JOB_IMAGES, **over})


def deploy(**over) -> DeploySpec:
    return DeploySpec(
        **{"instance": INSTANCE, "postgres_version": "16", "storage_size_gb": 1, "dns_label": "orders-copy", **over}
    )


def container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def env_of(manifest: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(manifest)["env"]}


# --- azcopy without `azcopy login`, job pods without the deployment's identity ------------------

# A job's blob grant (resources/blob_sas.py) opening the one blob `x`
GRANT_QUERY = "se=2030-01-01T00%3A00%3A00Z&sp=r&sv=2026-10-06&sr=b"
GRANT = f'{{"format":1,"query":"{GRANT_QUERY}","signatures":{{"x":"s1g%2B%3D"}}}}'


@pytest.mark.parametrize("kind", list(JobKind))
def test_no_job_pod_carries_the_deployments_workload_identity(kind):
    """Jobs reach blob storage with their grant only: no workload identity label (the webhook would
    inject the identity's token into every container), no azcopy auto-login."""
    job = m.job(job_spec(kind, INSTANCE, GRANT), platform().settings(), "scripts")
    validate(job)
    assert "azure.workload.identity/use" not in job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "AZCOPY_AUTO_LOGIN_TYPE" not in env_of(job)
    assert env_of(job)["AZCOPY_SAS_FILE"] == {"name": "AZCOPY_SAS_FILE", "value": "/var/run/toygres/blob/sas"}


def run_common(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """common.sh's load_secrets + one blob call, with an azcopy stand-in that records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "azcopy-calls"
    fake = bin_dir / "azcopy"
    fake.write_text(f'#!/bin/bash\nprintf "%s|auto=%s\\n" "$*" "${{AZCOPY_AUTO_LOGIN_TYPE:-}}" >> {calls}\n')
    fake.chmod(0o755)
    script = f'source {SCRIPTS_DIR}/common.sh; load_secrets; download_file x "{tmp_path}/x"'
    full_env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TOYGRES_JOB": "t"}
    result = subprocess.run(["bash", "-c", script], env=full_env, capture_output=True, text=True, timeout=30)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_the_job_environment_never_calls_azcopy_login_on_kubernetes(tmp_path):
    job = m.job(job_spec(JobKind.backup, INSTANCE, GRANT), platform().settings(), "scripts")
    literals = {name: e["value"] for name, e in env_of(job).items() if "value" in e}
    literals["PGPASSWORD"] = "from-the-secret"
    grant = tmp_path / "grant"  # where the pod has its Secret mounted
    grant.write_text(GRANT)
    literals["AZCOPY_SAS_FILE"] = str(grant)
    result, calls = run_common(tmp_path, {k: v for k, v in literals.items() if k not in ("HOME", "TMPDIR")})
    assert result.returncode == 0, result.stderr
    assert calls, "azcopy was not called at all"
    assert not [c for c in calls if c.split()[0] == "login"], calls
    assert not [c for c in calls if "--identity" in c], "the documented rule: never --identity"
    assert all(c.endswith("|auto=") for c in calls), calls


def test_no_grant_is_a_clear_error_not_a_login(tmp_path):
    result, calls = run_common(
        tmp_path, {"BLOB_URL": "https://a.blob.core.windows.net/c/p", "AZCOPY_AUTO_LOGIN_TYPE": "WORKLOAD"}
    )
    assert result.returncode != 0
    assert "no blob grant given (AZCOPY_SAS_FILE)" in result.stdout + result.stderr
    assert calls == []


def test_the_local_platform_hands_the_grant_over_as_a_private_file(tmp_path):
    tmp_path.chmod(0o711)
    local = LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path="/bin/true")
    spec = JobSpec(
        kind=JobKind.restore,
        name="restore-x",
        script="restore.sh",
        instance=InstanceRef(k8s_name="x", namespace="default"),
        blob_sas=SecretStr(GRANT),
    )
    env = local._job_env(spec, local._fresh_job_dir(spec))
    assert "AZCOPY_AUTO_LOGIN_TYPE" not in env and env["AZCOPY_SAS_FILE"]
    result, calls = run_common(tmp_path, {"AZCOPY_SAS_FILE": env["AZCOPY_SAS_FILE"], "BLOB_URL": "https://b/c"})
    assert result.returncode == 0, result.stderr
    assert (
        calls
        and calls[0].startswith(f"copy https://b/c/x?{GRANT_QUERY}&sig=s1g%2B%3D ")
        and calls[0].endswith("|auto=")
    ), calls


# --- namespaces -------------------------------------------------------------------------------


def test_instances_default_to_the_platforms_namespace_and_others_must_be_enabled():
    k8s = platform(namespace="toygres-instances", instance_namespaces=["team-a"])
    assert k8s.resolve_namespace(None) == "toygres-instances"
    assert k8s.resolve_namespace("team-a") == "team-a"
    with pytest.raises(ValidationFailed) as error:
        k8s.resolve_namespace("default")
    assert error.value.field == "namespace"
    assert "TOYGRES_K8S_INSTANCE_NAMESPACES" in str(error.value) and "team-a" in str(error.value)


def test_the_platforms_default_namespace_is_not_dagsters():
    assert KubernetesPlatform().namespace == "toygres-instances"


def test_the_local_platform_keeps_its_namespace_directories():
    local = LocalPlatform(state_dir="/nonexistent", azcopy_path="/bin/true")
    assert local.resolve_namespace(None) == "default"
    assert local.resolve_namespace("team-a") == "team-a"
    with pytest.raises(ValidationFailed, match="namespace"):
        local.resolve_namespace("Team_A")


def test_kubernetes_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("TOYGRES_K8S_NAMESPACE", "pg")
    monkeypatch.setenv("TOYGRES_K8S_INSTANCE_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv("TOYGRES_K8S_JOB_IMAGES", f"16=acr.io/job@{DIGEST}, 17=acr.io/job:17-20261126")
    monkeypatch.setenv("TOYGRES_K8S_LOAD_BALANCER_SOURCE_RANGES", "203.0.113.0/24,2001:db8::/32")
    k8s = kubernetes_platform_from_env()
    assert k8s.namespace == "pg" and k8s.instance_namespaces == ["team-a", "team-b"]
    assert k8s.job_images == {"16": f"acr.io/job@{DIGEST}", "17": "acr.io/job:17-20261126"}
    assert k8s.load_balancer_source_ranges == ["203.0.113.0/24", "2001:db8::/32"]
    monkeypatch.setenv("TOYGRES_K8S_JOB_IMAGES", "16")
    with pytest.raises(ValueError, match="TOYGRES_K8S_JOB_IMAGES"):
        kubernetes_platform_from_env()


# --- job image per PostgreSQL major -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(JobKind))
def test_job_image_follows_the_major_and_a_missing_one_is_an_error(kind):
    settings = KubernetesPlatform(job_images={"16": f"acr.io/job16@{DIGEST}"}).settings()
    spec = job_spec(kind, INSTANCE)
    spec = spec.model_copy(update={"env": {**spec.env, "POSTGRES_VERSION": "16"}})
    assert container(m.job(spec, settings, "s"))["image"] == f"acr.io/job16@{DIGEST}"
    for version in ("17", "18"):
        other = spec.model_copy(update={"env": {**spec.env, "POSTGRES_VERSION": version}})
        with pytest.raises(m.ManifestError, match=f"PostgreSQL {version}"):
            m.job(other, settings, "s")
    unversioned = spec.model_copy(update={"env": {k: v for k, v in spec.env.items() if k != "POSTGRES_VERSION"}})
    with pytest.raises(m.ManifestError, match="POSTGRES_VERSION"):
        m.job(unversioned, settings, "s")


def test_the_platform_refuses_a_version_without_image_at_request_time():
    k8s = KubernetesPlatform(job_images={"16": f"acr.io/job16@{DIGEST}"})
    k8s.check_postgres_version("16", "source_image_id")
    with pytest.raises(ValidationFailed) as error:
        k8s.check_postgres_version("17", "source_image_id")
    assert error.value.field == "source_image_id" and "TOYGRES_K8S_JOB_IMAGES" in str(error.value)


@pytest.mark.parametrize(
    "image", ["acr.io/job", "acr.io/job:latest", "acr.io/job:17", "acr.io:5000/job", "acr.io/job@sha256:abc"]
)
def test_mutable_job_image_references_are_refused(image):
    with pytest.raises(ValidationError, match="job_images"):
        KubernetesPlatform(job_images={"17": image})


@pytest.mark.parametrize(
    "image", [f"acr.io/job@{DIGEST}", "acr.io/job:17-20261126-3f2a9c1", f"acr.io:5000/team/job:17.6-1@{DIGEST}"]
)
def test_pinned_job_image_references_are_accepted(image):
    assert KubernetesPlatform(job_images={"17": image}).job_images["17"] == image


def test_one_job_image_per_supported_major_is_built():
    dockerfile = (Path(m.TEMPLATES_DIR).parent / "deploy/kubernetes/job-image/Dockerfile").read_text()
    build = Path(m.TEMPLATES_DIR).parent / "deploy/kubernetes/job-image/build.sh"
    assert "ARG BASE_IMAGE" in dockerfile and os.access(build, os.X_OK)
    listed = subprocess.run(["bash", str(build), "--list-majors"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == list(SUPPORTED_MAJORS)


# --- TLS and exposure ---------------------------------------------------------------------------


def test_pg_hba_only_accepts_tls_over_the_network():
    config = m.hba_config(INSTANCE)
    validate(config)
    rules = [line.split() for line in config["data"]["pg_hba.conf"].splitlines() if line and not line.startswith("#")]
    assert {rule[0] for rule in rules} == {"local", "hostssl"}
    assert ["hostssl", "all", "all", "0.0.0.0/0", "scram-sha-256"] in rules
    assert ["hostssl", "all", "all", "::/0", "scram-sha-256"] in rules


def test_tls_secret_holds_a_certificate_for_the_instances_names():
    names = m.tls_names(deploy(), "westeurope")
    secret = m.tls_secret(INSTANCE, names)
    validate(secret)
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    key = serialization.load_pem_private_key(base64.b64decode(secret["data"]["tls.key"]), password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {
        "orders-copy.westeurope.cloudapp.azure.com",
        "orders-ab12c.toygres-instances.svc.cluster.local",
        "orders-ab12c.toygres-instances.svc",
    } <= set(sans)


def test_the_server_serves_tls_with_the_instances_certificate():
    sts = m.statefulset(deploy(), platform().settings())
    validate(sts)
    args = container(sts)["args"]
    for setting in (
        "ssl=on",
        "ssl_cert_file=/etc/toygres/tls/tls.crt",
        "ssl_key_file=/etc/toygres/tls/tls.key",
        "ssl_min_protocol_version=TLSv1.2",
    ):
        assert setting in args
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == m.tls_secret_name(INSTANCE)
    # root-owned, group fsGroup: the kubelet adds g+r; postgres accepts 0640 root-owned keys, not more.
    assert volumes["tls"]["secret"]["defaultMode"] == 0o440
    mounts = {v["name"]: v for v in container(sts)["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/toygres/tls", "readOnly": True}


def test_backup_jobs_require_tls_to_the_source():
    job = m.job(job_spec(JobKind.backup, INSTANCE, GRANT), platform().settings(), "s")
    assert env_of(job)["PGSSLMODE"]["value"] == "require"


def test_connection_strings_require_tls_when_the_platform_serves_it():
    strings = connection_strings(
        Endpoints(host="h.example", port=5432, external_ip="20.1.2.3", dns_name="h.example", sslmode="require"),
        password=None,
    )
    assert strings.ip == "postgresql://postgres@20.1.2.3:5432/postgres?sslmode=require"
    assert strings.dns == "postgresql://postgres@h.example:5432/postgres?sslmode=require"
    local = connection_strings(Endpoints(host="127.0.0.1", port=5999), password=None)
    assert local.ip == "postgresql://postgres@127.0.0.1:5999/postgres"


def test_load_balancer_source_ranges_come_from_the_settings():
    k8s = platform(load_balancer_source_ranges=["203.0.113.0/24", "2001:db8::/32"])
    svc = m.service(deploy(), k8s.settings())
    validate(svc)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24", "2001:db8::/32"]
    internal = m.service(deploy(internal=True), k8s.settings())
    validate(internal)
    assert internal["spec"]["type"] == "ClusterIP" and "loadBalancerSourceRanges" not in internal["spec"]
    with pytest.raises(ValidationError, match="load_balancer_source_ranges"):
        platform(load_balancer_source_ranges=["not-a-cidr"])
    assert all(ipaddress.ip_network(r) for r in k8s.load_balancer_source_ranges)


# --- sturdier pods ------------------------------------------------------------------------------


def test_statefulset_survives_crash_recovery_and_shuts_down_fast():
    k8s = platform(postgres_termination_grace_seconds=90, shm_size_limit="2Gi", startup_timeout_seconds=1800)
    sts = m.statefulset(deploy(), k8s.settings())
    validate(sts)
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    assert c["startupProbe"]["exec"]["command"][0] == "pg_isready"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800
    assert "initialDelaySeconds" not in c["livenessProbe"], "the startup probe holds liveness back"
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert pod["terminationGracePeriodSeconds"] == 90
    pre_stop = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert "pg_ctl" in pre_stop and "-m fast" in pre_stop


def test_statefulset_is_governed_by_a_headless_service():
    sts = m.statefulset(deploy(), platform().settings())
    headless = m.headless_service(deploy())
    validate(headless)
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"] == f"{INSTANCE.k8s_name}-hl"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("kind", list(JobKind))
def test_a_checksum_failure_fails_the_job_at_once(kind):
    job = m.job(job_spec(kind, INSTANCE, GRANT), platform().settings(), "s")
    validate(job)
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "In", "values": [3]}} in rules


# --- DNS labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["ab", "1orders", "orders-", "a" * 64, "orders\n", "Orders", "-orders"])
def test_dns_labels_follow_azures_rule(label):
    with pytest.raises(m.ManifestError, match="dns_label"):
        m.service(deploy(dns_label=label), platform().settings())


# --- against the API stand-in -------------------------------------------------------------------


def test_deploy_creates_the_tls_secret_and_headless_service_once_and_delete_removes_them(tmp_path):
    with running_cluster(tmp_path) as cluster:
        k8s = platform(
            namespace=INSTANCE.namespace,
            kubeconfig_path=str(cluster.kubeconfig),
            azure_region="westeurope",
            load_balancer_source_ranges=["203.0.113.0/24"],
        )
        k8s.deploy_instance(deploy())
        first = cluster.get("secrets", INSTANCE.namespace, m.tls_secret_name(INSTANCE))
        k8s.deploy_instance(deploy())  # a re-run adopts: the certificate clients may have pinned stays
        assert cluster.get("secrets", INSTANCE.namespace, m.tls_secret_name(INSTANCE))["data"] == first["data"]
        assert cluster.get("services", INSTANCE.namespace, f"{INSTANCE.k8s_name}-hl")["spec"]["clusterIP"] == "None"
        lb = cluster.get("services", INSTANCE.namespace, INSTANCE.k8s_name)
        assert lb["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
        k8s.delete_instance(INSTANCE)
        assert cluster.get("secrets", INSTANCE.namespace, m.tls_secret_name(INSTANCE)) is None
        assert cluster.get("services", INSTANCE.namespace, f"{INSTANCE.k8s_name}-hl") is None


def test_endpoints_say_tls_is_required(tmp_path):
    with running_cluster(tmp_path) as cluster:
        k8s = platform(namespace=INSTANCE.namespace, kubeconfig_path=str(cluster.kubeconfig))
        k8s.deploy_instance(deploy(internal=True))
        assert k8s.endpoints(INSTANCE).sslmode == "require"


def test_a_job_for_a_version_without_image_creates_nothing(tmp_path):
    with running_cluster(tmp_path) as cluster:
        k8s = KubernetesPlatform(job_images={"16": f"acr.io/job16@{DIGEST}"}, kubeconfig_path=str(cluster.kubeconfig))
        spec = job_spec(JobKind.restore, INSTANCE, GRANT)
        spec = spec.model_copy(update={"env": {**spec.env, "POSTGRES_VERSION": "17"}})
        with pytest.raises(PlatformError, match="PostgreSQL 17"):
            k8s.run_job(spec, lambda line: None)
        assert cluster.creations() == []


@pytest.mark.parametrize("kind", [JobKind.backup, JobKind.restore])
def test_the_job_templates_show_the_settings_defaults(kind):
    """Settings are declared once (ManifestSettings); what a reader of a Job template sees is their default."""
    template = m.load_template(f"{kind.value}-job.yaml")
    defaults = m.ManifestSettings(job_images={"17": "registry.example/toygres-job:17-2024@sha256:" + "a" * 64})
    rendered = m.job(
        job_spec(kind, InstanceRef(k8s_name="x", namespace="toygres-instances"), GRANT), defaults, "scripts"
    )
    for key in ("backoffLimit", "ttlSecondsAfterFinished"):
        assert template["spec"][key] == rendered["spec"][key], key
    pod, rendered_pod = template["spec"]["template"]["spec"], rendered["spec"]["template"]["spec"]
    assert pod["securityContext"] == rendered_pod["securityContext"]


def test_the_templates_show_the_platforms_defaults():
    """Settings are declared once (ManifestSettings); the template values a reader sees are those defaults."""
    template = m.load_template("postgres-statefulset.yaml")
    rendered = m.statefulset(deploy(), platform().settings())
    pod, rendered_pod = template["spec"]["template"]["spec"], rendered["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == rendered_pod["terminationGracePeriodSeconds"]
    assert [v for v in pod["volumes"] if v["name"] == "dshm"] == [
        v for v in rendered_pod["volumes"] if v["name"] == "dshm"
    ]
    probe, rendered_probe = pod["containers"][0]["startupProbe"], rendered_pod["containers"][0]["startupProbe"]
    assert (probe["periodSeconds"], probe["failureThreshold"]) == (
        rendered_probe["periodSeconds"],
        rendered_probe["failureThreshold"],
    )
    assert pod["securityContext"] == rendered_pod["securityContext"]


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A directory the unprivileged server user can reach (pytest's tmp_path parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="toygres-tls-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        remove_tree(path)


def test_a_real_server_with_the_rendered_tls_settings_refuses_plain_connections(service_dir):
    """A real PostgreSQL with the StatefulSet's ssl/hba settings, the certificate Secret's files laid
    out as the kubelet does (root-owned, group fsGroup, mode 0440): TLS works, plain TCP is refused."""
    tmp_path = service_dir
    server = LocalPostgresServer(
        data_dir=tmp_path / "pgdata",
        port=free_port(),
        socket_dir=tmp_path / "run",
        log_file=tmp_path / "log" / "postgres.log",
    )
    server.initdb("postgres", "s3cret")
    tls_dir, conf_dir = tmp_path / "tls", tmp_path / "conf"
    tls_dir.mkdir()
    conf_dir.mkdir()
    secret = m.tls_secret(INSTANCE, m.tls_names(deploy(), "westeurope"))
    user = run_as_user()
    for key in (m.TLS_CERT_KEY, m.TLS_KEY_KEY):
        path = tls_dir / key
        path.write_bytes(base64.b64decode(secret["data"][key]))
        if user is not None:  # as the kubelet leaves a Secret volume with fsGroup
            os.chown(path, 0, pwd.getpwnam(user).pw_gid)
        path.chmod(0o440)
    tls_dir.chmod(0o755)
    (conf_dir / "pg_hba.conf").write_text(m.hba_config(INSTANCE)["data"]["pg_hba.conf"])
    conf_dir.chmod(0o755)
    (conf_dir / "pg_hba.conf").chmod(0o644)

    args = container(m.statefulset(deploy(), platform().settings()))["args"]
    settings = [args[i + 1] for i, arg in enumerate(args) if arg == "-c"]
    moved = {
        "hba_file": str(conf_dir / "pg_hba.conf"),
        "listen_addresses": "127.0.0.1",
        "ssl_cert_file": str(tls_dir / m.TLS_CERT_KEY),
        "ssl_key_file": str(tls_dir / m.TLS_KEY_KEY),
    }
    options = [f"-p {server.port}", f"-c unix_socket_directories={server.socket_dir}"]
    for setting in settings:
        name, _, value = setting.partition("=")
        options.append(f"-c {name}={moved.get(name, value)}")
    give_to_service_user(server.socket_dir)
    give_to_service_user(server.log_file.parent)
    pg_ctl = [str(postgres_bindir() / "pg_ctl"), "-D", str(server.data_dir)]
    run_checked(
        as_service_user(
            [*pg_ctl, "start", "-w", "-t", "60", "-l", str(server.log_file), "-o", " ".join(options)], service_env()
        ),
        timeout=90,
    )
    try:
        url = connection_strings(
            Endpoints(host="127.0.0.1", port=server.port, sslmode=m.CLIENT_SSLMODE), password=SecretStr("s3cret")
        ).ip
        assert url.endswith("?sslmode=require")
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
            psycopg.connect(url.replace("sslmode=require", "sslmode=disable"), connect_timeout=10)
        probe = [str(postgres_bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0, "the probes still pass"
    finally:
        server.stop("immediate")


def test_the_stale_job_sweep_covers_every_served_namespace_whatever_others_answer():
    """The janitor is handed the namespaces of every CMS row, old ones (`default`, before instances had a
    namespace of their own) included. Only namespaces this deployment serves are swept, and one that
    answers 403 does not stop the others."""
    from types import SimpleNamespace

    from kubernetes.client import ApiException

    listed: list[str] = []

    class Batch:
        def list_namespaced_job(self, namespace, **kw):
            listed.append(namespace)
            if namespace == "team-a":  # enabled, but its Role is missing: a deploy mistake
                raise ApiException(status=403, reason="Forbidden")
            return SimpleNamespace(items=[])

    class Core:
        def list_namespaced_secret(self, namespace, **kw):
            return SimpleNamespace(items=[])

    class Platform(KubernetesPlatform):
        @property
        def _batch(self):
            return Batch()

        @property
        def _core(self):
            return Core()

    janitor = Platform(namespace="toygres-instances", instance_namespaces=["team-a"])
    with pytest.raises(PlatformError, match="team-a: 403 Forbidden"):
        janitor.delete_stale_jobs({"default", "team-a", "toygres-instances"}, 3600)
    assert sorted(listed) == ["team-a", "toygres-instances"]


def test_no_job_script_logs_azcopy_in():
    """The job environment test runs common.sh; this one reads every script, so a `login` added to
    backup.sh or restore.sh is caught too (comments aside)."""
    for script in sorted(SCRIPTS_DIR.glob("*.sh")):
        code = [line.split("#", 1)[0] for line in script.read_text().splitlines()]
        assert not [line for line in code if re.search(r"\bazcopy\b.*\blogin\b|--identity", line)], script.name
