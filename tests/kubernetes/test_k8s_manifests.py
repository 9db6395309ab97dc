"""Every manifest the Kubernetes platform renders, for a spread of inputs, validated against the
official Kubernetes JSON schemas (kubernetes-validate, shipped offline with the package), plus
the rules the schemas cannot express (name lengths, label syntax, secrets only by reference,
the exact password in the Secret, byte-identical job scripts)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from records import ImageType, InstanceRef
from resources.platform import k8s_manifests as m
from resources.platform.base import SCRIPTS_DIR, DeploySpec, JobKind, JobSpec, job_script_files
from resources.platform.kubernetes import KubernetesPlatform

pytestmark = pytest.mark.kubernetes

# AKS' supported range at the time of writing; both validate offline (schemas ship in the wheel).
K8S_VERSIONS = ["1.30", "1.33"]

HOSTILE_PASSWORDS = [
    "plain-Password1",
    'quote"inside',
    "back\\slash\\",
    "single'quote",
    "new\nline",
    "{{ .Values.password }}",
    "${PGPASSWORD} $(rm -rf /) `id`",
    'all: of "them" \\ \' \n {{ x }} # - [ ] , & * ! | > % @',
    "  leading and trailing spaces  ",
    "ünïcødé-密码",
]

NAME_52 = "a" + "b" * 45 + "-x1y2z"  # 52 characters: the longest k8s_name the models allow
assert len(NAME_52) == 52

INSTANCES = [
    InstanceRef(k8s_name="orders-ab12c", namespace="toygres"),
    InstanceRef(k8s_name=NAME_52, namespace="team-" + "n" * 58),
]

JOB_IMAGES = {v: f"registry.example/toygres-job:{v}-20261126@sha256:{'ab' * 32}" for v in ("14", "15", "16", "17")}

PLATFORMS = [
    KubernetesPlatform(job_images=JOB_IMAGES),
    KubernetesPlatform(
        job_images={"17": "registry.example/toygres-job:17-20261126-3f2a9c1"},
        storage_class="managed-csi-premium",
        job_image_pull_secret="acr-pull",
        pg_durable_images={"17": "acr.io/pg_durable:17-20261126-3f2a9c1"},
        pg_durable_pull_secret="pg-durable-pull",
        postgres_images={v: f"registry.example/postgres:{v}-bookworm@sha256:{'cd' * 32}" for v in ("15", "16")},
        allow_public_without_source_ranges=True,
        scratch_size_limit="20Gi",
        job_cpu_limit="2",
        postgres_cpu_limit="4",
        job_memory_request=None,
    ),
]


def validate(manifest: dict) -> None:
    # Validate what would go over the wire: a JSON round trip, like the client sends it.
    wire = json.loads(json.dumps(manifest))
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(wire, version, strict=True)
    check_names_and_labels(wire)
    assert "{{" not in json.dumps(wire["metadata"]), "template syntax leaked into metadata"
    assert "set-by-the-platform" not in json.dumps(wire), "a template placeholder was left in place"


def check_names_and_labels(manifest: dict) -> None:
    """What the JSON schemas leave to the API server's validation."""
    meta = manifest["metadata"]
    name_limit = 52 if manifest["kind"] == "StatefulSet" else 63
    if manifest["kind"] in ("Secret", "ConfigMap", "PersistentVolumeClaim"):
        name_limit = 253
    assert len(meta["name"]) <= name_limit and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), meta[
        "name"
    ]
    assert m.DNS1123_LABEL.fullmatch(meta["namespace"]) and len(meta["namespace"]) <= 63
    label_sets = [meta.get("labels", {})]
    if manifest["kind"] in ("Job", "StatefulSet"):
        label_sets.append(manifest["spec"]["template"]["metadata"]["labels"])
    if manifest["kind"] == "StatefulSet":
        selector = manifest["spec"]["selector"]["matchLabels"]
        assert selector.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()
    for labels in label_sets:
        for key, value in labels.items():
            m.check_label_key(key)
            assert len(value) <= 63 and m.LABEL_VALUE.fullmatch(value), (key, value)


def pod_env(manifest: dict) -> list[dict]:
    return manifest["spec"]["template"]["spec"]["containers"][0]["env"]


def secret_literals_absent(manifest: dict, secrets: list[str]) -> None:
    text = json.dumps(manifest)
    for secret in secrets:
        assert json.dumps(secret)[1:-1] not in text, "a secret appears in the manifest"
        assert base64.b64encode(secret.encode()).decode() not in text


# --- instance objects --------------------------------------------------------------------------


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
@pytest.mark.parametrize("instance", INSTANCES, ids=["short", "52-chars"])
def test_instance_secret_is_valid_and_holds_the_exact_password(instance, password):
    secret = m.instance_secret(instance, password)
    validate(secret)
    # Through YAML too (kubectl apply -f of a dumped manifest), byte for byte.
    round_trip = yaml.safe_load(yaml.safe_dump(secret))
    for doc in (secret, round_trip):
        assert base64.b64decode(doc["data"]["password"]).decode("utf-8") == password
    assert "stringData" not in secret
    assert secret["metadata"]["name"] == f"{instance.k8s_name}-secret"


@pytest.mark.parametrize("platform", PLATFORMS, ids=["defaults", "custom"])
@pytest.mark.parametrize("instance", INSTANCES, ids=["short", "52-chars"])
def test_volume_claim(instance, platform):
    pvc = m.volume_claim(instance, 37, platform.settings())
    validate(pvc)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "37Gi"
    assert pvc["spec"].get("storageClassName") == platform.storage_class
    with pytest.raises(m.ManifestError):
        m.volume_claim(instance, 0, platform.settings())


def test_pg_hba_requires_scram_for_local_and_every_host():
    config = m.hba_config(INSTANCES[0])
    validate(config)
    rules = [line.split() for line in config["data"]["pg_hba.conf"].splitlines() if line and not line.startswith("#")]
    assert ["local", "all", "all", "scram-sha-256"] in rules
    assert ["hostssl", "all", "all", "0.0.0.0/0", "scram-sha-256"] in rules
    assert ["hostssl", "all", "all", "::/0", "scram-sha-256"] in rules
    assert all(rule[-1] == "scram-sha-256" for rule in rules), "nothing may be trusted"


DEPLOYS = [
    dict(postgres_version="17", image_type=ImageType.stock, internal=False),
    dict(postgres_version="16", image_type=ImageType.stock, internal=True),
    dict(postgres_version="17", image_type=ImageType.pg_durable, internal=False),
    dict(postgres_version="15", image_type=ImageType.stock, internal=False, image_override="registry.example/pg:15.8"),
]


@pytest.mark.parametrize("deploy", DEPLOYS, ids=["stock", "internal", "pg_durable", "override"])
@pytest.mark.parametrize("instance", INSTANCES, ids=["short", "52-chars"])
def test_statefulset_and_service(instance, deploy):
    platform = PLATFORMS[1]
    spec = DeploySpec(instance=instance, storage_size_gb=5, dns_label="orders-" + "d" * 56, **deploy)
    sts = m.statefulset(spec, platform.settings())
    svc = m.service(spec, platform.settings())
    validate(sts)
    validate(svc)

    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["PGDATA"]["value"] == "/var/lib/postgresql/data/pgdata"
    data_mount = next(v for v in container["volumeMounts"] if v["name"] == "data")
    assert env["PGDATA"]["value"].startswith(data_mount["mountPath"] + "/"), "PGDATA must live on the PVC"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{instance.k8s_name}-secret",
        "key": "password",
    }
    assert "-c" in container["args"] and "hba_file=/etc/toygres/pg_hba.conf" in container["args"]
    assert container["args"][0] == "postgres", "the image entrypoint only runs its setup for `postgres ...`"
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{instance.k8s_name}-data"
    assert volumes["config"]["configMap"]["name"] == f"{instance.k8s_name}-config"
    assert svc["metadata"]["name"] == instance.k8s_name and sts["spec"]["serviceName"] == f"{instance.k8s_name}-hl"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()

    if deploy.get("image_override"):
        assert container["image"] == deploy["image_override"]
    elif deploy["image_type"] is ImageType.pg_durable:
        assert container["image"] == "acr.io/pg_durable:17-20261126-3f2a9c1"
        assert pod["imagePullSecrets"] == [{"name": "pg-durable-pull"}]
    else:
        major = deploy["postgres_version"]
        assert container["image"] == platform.postgres_images.get(major, platform.job_images.get(major))
        assert "imagePullSecrets" not in pod

    if deploy["internal"]:
        assert svc["spec"]["type"] == "ClusterIP"
        assert m.DNS_LABEL_ANNOTATION not in svc["metadata"].get("annotations", {})
    else:
        assert svc["spec"]["type"] == "LoadBalancer"
        assert svc["metadata"]["annotations"][m.DNS_LABEL_ANNOTATION] == spec.dns_label


def test_pg_durable_without_a_configured_image_is_refused():
    spec = DeploySpec(
        instance=INSTANCES[0], postgres_version="17", image_type=ImageType.pg_durable, storage_size_gb=1, dns_label="x"
    )
    with pytest.raises(m.ManifestError, match="pg_durable"):
        m.statefulset(spec, PLATFORMS[0].settings())


@pytest.mark.parametrize("bad", ["Upper", "under_score", "-lead", "a" * 53])
def test_invalid_instance_names_are_refused_before_any_api_call(bad):
    with pytest.raises(m.ManifestError):
        m.instance_secret(InstanceRef(k8s_name=bad, namespace="toygres"), "pw")


# --- jobs --------------------------------------------------------------------------------------


def job_spec(kind: JobKind, instance: InstanceRef, sas: str | None = None, **over) -> JobSpec:
    env = {
        JobKind.backup: {
            "BLOB_URL": "https://acct.blob.core.windows.net/images/orders/2024-01-01",
            "IMAGE_NAME": "Orders_Nightly-" + "x" * 80,
            "SOURCE_INSTANCE": instance.k8s_name,
            "SOURCE_NAMESPACE": instance.namespace,
        },
        JobKind.restore: {
            "BLOB_URL": "https://acct.blob.core.windows.net/images/orders/2024-01-01",
            "MANIFEST_SHA256": "ab" * 32,
            "BACKUP_SHA256SUMS": f"{'cd' * 32}  globals.sql\n{'ef' * 32}  databases/001.dump",
        },
    }[kind] | {"POSTGRES_VERSION": "17"}
    name = over.pop("name", f"{kind.value}-{instance.k8s_name}"[:63].rstrip("-"))
    return JobSpec(
        kind=kind,
        name=name,
        script=over.pop("script", f"{kind.value}.sh"),
        env=env,
        instance=instance,
        blob_sas=SecretStr(sas) if sas else None,
        labels={"toygres/image": "Orders_Nightly-" + "x" * 80, "toygres/kind": kind.value},
        **over,
    )


# A job's blob grant (resources/blob_sas.py), as the pipelines mint it
SAS = (
    '{"format":1,"query":"st=2030-01-01T00%3A00%3A00Z&se=2030-01-01T02%3A00%3A00Z&sp=r&sv=2026-10-06&sr=b",'
    '"signatures":{"manifest.json":"AbC%2B%2Fdef%3D","globals.sql":"GhI%2Bjkl%3D"}}'
)


@pytest.mark.parametrize("platform", PLATFORMS, ids=["defaults", "custom"])
@pytest.mark.parametrize("kind", list(JobKind))
@pytest.mark.parametrize("instance", INSTANCES, ids=["short", "52-chars"])
def test_job_manifest(instance, kind, platform):
    spec = job_spec(kind, instance, SAS)
    scripts = m.scripts_config_map(instance.namespace)
    job = m.job(spec, platform.settings(), scripts["metadata"]["name"])
    validate(job)
    validate(scripts)
    secret = m.job_secret(spec, SAS)
    validate(secret)
    assert base64.b64decode(secret["data"]["sas"]).decode() == SAS
    secret_literals_absent(job, [SAS, "AbC%2B%2Fdef%3D", "GhI%2Bjkl%3D"])

    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "toygres"
    assert labels["app.kubernetes.io/component"] == kind.value
    assert labels["toygres/instance"] == instance.k8s_name
    assert labels["toygres/kind"] == kind.value
    assert labels["toygres/image"] != spec.labels["toygres/image"], "over-long label values are shortened..."
    assert spec.labels["toygres/image"] in job["metadata"]["annotations"][m.ORIGINAL_LABELS_ANNOTATION]  # ...kept here

    pod_meta = job["spec"]["template"]["metadata"]
    assert pod_meta["labels"]["app.kubernetes.io/component"] == kind.value
    assert "azure.workload.identity/use" not in pod_meta["labels"], "no job pod gets the deployment's identity"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == platform.service_account_name
    assert job["spec"]["backoffLimit"] == platform.backoff_limit
    assert job["spec"]["ttlSecondsAfterFinished"] == platform.job_ttl_seconds
    assert job["spec"]["activeDeadlineSeconds"] == spec.timeout_seconds
    container = pod["containers"][0]
    assert container["image"] == platform.job_images["17"]
    assert container["command"] == ["bash", f"/scripts/{kind.value}.sh"]
    expected = {kind: values for kind, values in platform.settings().job_resources.items() if values}
    assert container["resources"] == expected and expected["limits"]["memory"] == platform.job_memory_limit
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scripts"]["configMap"]["name"] == scripts["metadata"]["name"]

    env = {e["name"]: e for e in pod_env(job)}
    literals = {k: e["value"] for k, e in env.items() if "value" in e}
    for key, value in spec.env.items():
        assert literals[key] == value
    if kind is JobKind.backup:
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{instance.k8s_name}-secret",
            "key": "password",
        }
    else:  # a restore's fetch role needs no password; its serve role gets only the verifier
        assert "PGPASSWORD" not in env
    # the grant: its Secret mounted read-only as the file AZCOPY_SAS_FILE names, never an env variable
    assert not {"AZCOPY_SAS", "AZCOPY_AUTO_LOGIN_TYPE"} & set(env)
    assert volumes["blob-grant"]["secret"] == {
        "secretName": f"{spec.name}-sas",
        "items": [{"key": "sas", "path": "sas"}],
        "defaultMode": 0o440,
    }
    mount = next(v for v in container["volumeMounts"] if v["name"] == "blob-grant")
    assert mount["readOnly"] and literals["AZCOPY_SAS_FILE"] == f"{mount['mountPath']}/sas"
    for key in ("TMPDIR", "HOME", "AZCOPY_LOG_LOCATION", "AZCOPY_JOB_PLAN_LOCATION"):
        assert literals[key].startswith("/scratch"), key
    assert next(v for v in container["volumeMounts"] if v["name"] == "scratch")["mountPath"] == "/scratch"
    assert "emptyDir" in volumes["scratch"]
    assert not {"PGPASSWORD", "AZCOPY_SAS", "POSTGRES_PASSWORD"} & set(literals), "secrets only by reference"

    if kind is JobKind.backup:
        assert literals["PGHOST"] == f"{instance.k8s_name}.{instance.namespace}.svc.cluster.local"
        assert literals["PGPORT"] == "5432" and literals["PGUSER"] == "postgres"
        assert "data" not in volumes
    else:
        data_mount = next(v for v in container["volumeMounts"] if v["name"] == "data")
        assert data_mount["mountPath"] == platform.volume_mount_path
        assert literals["RESTORE_HANDOFF"] == f"{platform.volume_mount_path}/restore-handoff"
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{instance.k8s_name}-data"
        serve = next(c for c in pod["containers"] if c["name"] == "serve")
        serve_env = {e["name"]: e["value"] for e in serve["env"]}  # literals only: no secretKeyRef at all
        # restore-serve.sh puts PGDATA at $VOLUME_PATH/pgdata: the StatefulSet must agree.
        sts = m.statefulset(
            DeploySpec(instance=instance, postgres_version="17", storage_size_gb=1, dns_label="x"), platform.settings()
        )
        sts_env = {e["name"]: e.get("value") for e in pod_env(sts)}
        assert sts_env["PGDATA"] == f"{serve_env['VOLUME_PATH']}/pgdata"


@pytest.mark.parametrize(
    ("fetch_script", "serve_script"), [("restore.sh", "restore-serve.sh"), ("restore-pitr.sh", "restore-pitr-serve.sh")]
)
def test_a_restore_pod_splits_fetch_and_serve_and_only_fetch_holds_credentials(fetch_script, serve_script):
    """Issue 25: separate containers and users; the blob grant and the identity Secret in the fetch
    container only; the serve container (the image's code, or the replayed catalogue of a
    point-in-time restore) gets no token, no Secret but the password's verifier, and sees no other
    process."""
    platform = KubernetesPlatform(job_images=JOB_IMAGES, age_identity_secret="toygres-age-identities")
    spec = job_spec(JobKind.restore, INSTANCES[0], script=fetch_script)
    job = m.job(spec, platform.settings(), "scripts")
    validate(job)
    template = job["spec"]["template"]
    pod = template["spec"]
    assert pod["shareProcessNamespace"] is False
    assert template["metadata"]["annotations"]["azure.workload.identity/skip-containers"] == "serve"
    fetch, serve = (next(c for c in pod["containers"] if c["name"] == name) for name in ("job", "serve"))
    assert fetch["command"] == ["bash", f"/scripts/{fetch_script}"]
    assert serve["command"] == ["bash", f"/scripts/{serve_script}"]
    assert fetch["securityContext"]["runAsUser"] != serve["securityContext"]["runAsUser"] == platform.run_as_user
    volumes = {v["name"]: v for v in pod["volumes"]}

    def secrets_mounted(container) -> set[tuple[str, str]]:
        return {
            (volumes[mount["name"]]["secret"]["secretName"], item["key"])
            for mount in container["volumeMounts"]
            if "secret" in volumes[mount["name"]]
            for item in volumes[mount["name"]]["secret"]["items"]
        }

    def secret_refs(container) -> set[tuple[str, str]]:
        return {
            (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container["env"]
            if "valueFrom" in e
        }

    assert secrets_mounted(fetch) == {("toygres-age-identities", "identities"), (f"{spec.name}-sas", "sas")}
    assert secret_refs(fetch) == set()
    assert secrets_mounted(serve) == {(f"{spec.name}-sas", "password-verifier")}
    assert secret_refs(serve) == set()
    serve_env = {e["name"] for e in serve["env"]}
    for name in (
        "PGPASSWORD",
        "POSTGRES_PASSWORD_FILE",
        "AZCOPY_SAS",
        "AZCOPY_SAS_FILE",
        "AGE_IDENTITY_FILE",
        "BLOB_URL",
    ):
        assert name not in serve_env and not any(name in v for v in serve_env)
    assert not any(k.startswith("AZCOPY_") or k.startswith("AGE_") for k in serve_env)
    secret = m.job_secret(spec, '{"format":1}', "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy")
    validate(secret)
    assert set(secret["data"]) == {"sas", "password-verifier"}


def test_the_restore_network_policy_allows_only_dns_and_blob_storage():
    platform = KubernetesPlatform(job_images=JOB_IMAGES, restore_egress_cidrs=["10.20.30.0/24"])
    policy = m.restore_network_policy("team-a", platform.settings())
    validate(policy)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "restore"
    job = m.job(job_spec(JobKind.restore, INSTANCES[0]), platform.settings(), "scripts")
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()  # it selects the restore pods
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"] and spec["ingress"] == []
    assert spec["egress"] == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"ipBlock": {"cidr": "10.20.30.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]},
    ]
    none = m.restore_network_policy("team-a", KubernetesPlatform(job_images=JOB_IMAGES).settings())
    assert none["spec"]["egress"] == [spec["egress"][0]]  # DNS only


@pytest.mark.parametrize("platform", PLATFORMS, ids=["defaults", "custom"])
@pytest.mark.parametrize(("kind", "variable"), [(JobKind.backup, "PARALLEL_JOBS"), (JobKind.restore, "RESTORE_JOBS")])
@pytest.mark.parametrize("jobs", [2, 4, 16])
def test_a_parallel_job_requests_one_cpu_per_dump_job(platform, kind, variable, jobs):
    spec = job_spec(kind, INSTANCES[0])
    spec = spec.model_copy(update={"env": {**spec.env, variable: str(jobs)}})
    job = m.job(spec, platform.settings(), "toygres-job-scripts-x")
    validate(job)
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == str(jobs)
    # the API server refuses a request above the limit: a configured limit is raised to it
    if platform.job_cpu_limit is not None:
        assert resources["limits"]["cpu"] == str(max(jobs, int(platform.job_cpu_limit)))
    else:
        assert "cpu" not in resources.get("limits", {})
    assert resources["limits"]["memory"] == platform.job_memory_limit


@pytest.mark.parametrize("secret_key", sorted(m.SECRET_ENV_NAMES))
def test_secret_env_literals_are_refused(secret_key):
    spec = job_spec(JobKind.backup, INSTANCES[0])
    spec = spec.model_copy(update={"env": {**spec.env, secret_key: "hunter2"}})
    with pytest.raises(m.ManifestError, match="secrets"):
        m.job(spec, PLATFORMS[0].settings(), "toygres-job-scripts-x")


@pytest.mark.parametrize("name", ["Backup-Upper", "backup_under", "b" * 64])
def test_invalid_job_names_are_refused(name):
    spec = job_spec(JobKind.backup, INSTANCES[0], name=name)
    with pytest.raises(m.ManifestError, match="job name"):
        m.job(spec, PLATFORMS[0].settings(), "toygres-job-scripts-x")


def test_label_values_are_made_valid_and_stable():
    for value in ["ok-value", "Orders_Nightly-" + "x" * 80, "has spaces/and:colons", "-", "é" * 70, ""]:
        result = m.label_value(value)
        assert len(result) <= 63 and m.LABEL_VALUE.fullmatch(result), (value, result)
        assert m.label_value(value) == result
    assert m.label_value("ok-value") == "ok-value"
    assert m.label_value("a" * 64) != m.label_value("a" * 65), "distinct values stay distinct"


# --- the job scripts ---------------------------------------------------------------------------


def test_scripts_config_map_is_byte_identical_to_the_local_scripts():
    """The Job runs exactly the bytes the local platform copies from templates/scripts/."""
    manifest = m.scripts_config_map("toygres")
    validate(manifest)
    local = {path.name: path.read_bytes() for path in job_script_files()}
    assert {"common.sh", "backup.sh", "restore.sh", "archive_reader.py"} <= set(local)
    assert m.config_map_files(manifest) == local
    # ...and through YAML (kubectl apply / a dumped manifest) as well.
    assert m.config_map_files(yaml.safe_load(yaml.safe_dump(manifest))) == local
    assert manifest["immutable"] is True


def test_scripts_config_map_name_follows_the_content(tmp_path: Path):
    for name in ("common.sh", "backup.sh"):
        (tmp_path / name).write_bytes((SCRIPTS_DIR / name).read_bytes())
    files = m.script_files(tmp_path)
    first = m.scripts_config_map("ns", files)
    (tmp_path / "backup.sh").write_bytes(files["backup.sh"] + b"# changed\n")
    second = m.scripts_config_map("ns", m.script_files(tmp_path))
    assert first["metadata"]["name"] != second["metadata"]["name"], "a changed script gets a new ConfigMap"
    # Non-UTF-8 bytes survive as binaryData.
    odd = {"odd.sh": b"echo \xff\xfe\n"}
    manifest = m.scripts_config_map("ns", odd)
    validate(manifest)
    assert m.config_map_files(manifest) == odd


def test_every_template_parses_and_keeps_its_placeholders_out_of_the_output():
    templates = sorted(p.name for p in m.TEMPLATES_DIR.glob("*.yaml"))
    assert set(templates) >= {
        "backup-job.yaml",
        "restore-job.yaml",
        "postgres-pvc.yaml",
        "postgres-secret.yaml",
        "postgres-config.yaml",
        "postgres-statefulset.yaml",
        "postgres-service.yaml",
    }
    for name in templates:
        assert isinstance(m.load_template(name), dict)
        assert m.load_template(name) is not m.load_template(name)


def test_restore_job_image_follows_the_target_postgres_version():
    platform = KubernetesPlatform(job_images=JOB_IMAGES)
    spec = job_spec(JobKind.restore, INSTANCES[0])
    assert (
        m.job(spec, platform.settings(), "x")["spec"]["template"]["spec"]["containers"][0]["image"] == JOB_IMAGES["17"]
    )
    spec = spec.model_copy(update={"env": {**spec.env, "POSTGRES_VERSION": "15"}})
    job = m.job(spec, platform.settings(), "x")
    validate(job)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == JOB_IMAGES["15"]
