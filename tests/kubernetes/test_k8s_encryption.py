"""Encrypted images on Kubernetes: the age identity Secret reaches restore Jobs only (rendered
manifests, validated against the official schemas like test_k8s_manifests.py)."""

from __future__ import annotations

import json

import pytest

from resources.platform import k8s_manifests as m
from resources.platform.base import JobKind
from resources.platform.kubernetes import KubernetesPlatform
from tests.kubernetes.test_k8s_manifests import INSTANCES, JOB_IMAGES, SAS, job_spec, pod_env, validate
from toygres_pipelines.resources_from_env import kubernetes_platform_from_env

pytestmark = pytest.mark.kubernetes

RECIPIENT = "age1" + "q" * 58
ENCRYPTING = KubernetesPlatform(
    job_images=JOB_IMAGES,
    age_recipient=RECIPIENT,
    age_identity_recipients=[RECIPIENT],
    age_identity_secret="toygres-age-identities",
)


def render(platform: KubernetesPlatform, kind: JobKind, instance, sas: str | None = None) -> dict:
    spec = job_spec(kind, instance, sas)
    scripts = m.scripts_config_map(instance.namespace)["metadata"]["name"]
    job = m.job(spec, platform.settings(), scripts)
    validate(job)
    return job


@pytest.mark.parametrize("instance", INSTANCES, ids=["short", "52-chars"])
def test_the_restore_job_mounts_the_identity_secret_read_only(instance):
    job = render(ENCRYPTING, JobKind.restore, instance, SAS)
    pod = job["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "secret" in v and v["name"] not in ("blob-grant", "password-verifier")]
    assert volume["secret"]["secretName"] == "toygres-age-identities"
    assert volume["secret"]["items"] == [{"key": "identities", "path": "identities"}]
    assert volume["secret"]["defaultMode"] == 0o440  # the job's group (fsGroup) reads it, nobody writes it
    container = pod["containers"][0]
    [mount] = [v for v in container["volumeMounts"] if v["name"] == volume["name"]]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in pod_env(job)}
    assert env["AGE_IDENTITY_FILE"] == f"{mount['mountPath']}/identities"
    assert "AGE_RECIPIENT" not in env


@pytest.mark.parametrize("instance", INSTANCES, ids=["short", "52-chars"])
def test_the_backup_job_never_sees_the_identity_secret(instance):
    job = render(ENCRYPTING, JobKind.backup, instance)
    text = json.dumps(job)
    assert "toygres-age-identities" not in text and "AGE_IDENTITY_FILE" not in text
    assert not [v for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v and v["name"] != "blob-grant"]


def test_without_an_identity_secret_the_restore_job_mounts_none():
    job = render(KubernetesPlatform(job_images=JOB_IMAGES), JobKind.restore, INSTANCES[0])
    assert "AGE_IDENTITY_FILE" not in json.dumps(job)
    assert not [
        v
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "secret" in v and v["name"] not in ("blob-grant", "password-verifier")
    ]


def test_encryption_settings_come_from_the_environment(monkeypatch):
    other = "age1" + "p" * 58
    monkeypatch.setenv("TOYGRES_AGE_RECIPIENT", RECIPIENT)
    monkeypatch.setenv("TOYGRES_AGE_IDENTITY_RECIPIENTS", f"{RECIPIENT}, {other}")
    monkeypatch.setenv("TOYGRES_K8S_AGE_IDENTITY_SECRET", "toygres-age-identities")
    platform = kubernetes_platform_from_env()
    assert platform.age_recipient == RECIPIENT
    assert platform.age_identity_recipients == [RECIPIENT, other]
    assert platform.settings().age_identity_secret == "toygres-age-identities"


def test_declared_identities_without_a_secret_are_refused():
    with pytest.raises(ValueError, match="age_identity_secret: required when age_identity_recipients"):
        KubernetesPlatform(job_images=JOB_IMAGES, age_identity_recipients=[RECIPIENT])
