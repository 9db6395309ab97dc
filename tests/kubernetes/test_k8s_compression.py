"""lz4/zstd exist in pg_dump from PostgreSQL 16 on, in the job images but on no binary here: the
backup Job of a 16+ source is rendered with zstd and the image of that major, and validates."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import kubernetes_validate
import pytest

from records import Image, ImageState, ImageType, Instance, InstanceState
from resources.blob import BlobStorageResource
from resources.platform import k8s_manifests as m
from resources.platform.kubernetes import KubernetesPlatform
from toygres_pipelines.images.backup import DEFAULT_DUMP_COMPRESSION, backup_job_spec

pytestmark = pytest.mark.kubernetes

JOB_IMAGES = {v: f"registry.example/toygres-job:{v}-20261126@sha256:{'ab' * 32}" for v in ("14", "15", "16", "17")}
AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


def records_of_major(major: str) -> tuple[Image, Instance]:
    now = datetime.now(UTC)
    source = Instance(
        id=uuid.uuid4(),
        user_name="orders",
        k8s_name="orders-ab12c",
        namespace="toygres",
        postgres_version=major,
        storage_size_gb=4,
        use_load_balancer=False,
        state=InstanceState.running,
        image_type=ImageType.stock,
        created_at=now,
        updated_at=now,
    )
    image_id = uuid.uuid4()
    image = Image(
        id=image_id,
        name="orders-ab12c__nightly",
        source_instance_id=source.id,
        source_k8s_name=source.k8s_name,
        source_namespace=source.namespace,
        blob_storage_url="http://127.0.0.1:10000/devstoreaccount1",
        blob_container="toygres-images",
        blob_path=f"images/{image_id}",
        storage_size_gb=4,
        postgres_version=major,
        image_type=ImageType.stock,
        state=ImageState.creating,
        created_at=now,
        updated_at=now,
    )
    return image, source


@pytest.mark.parametrize(("major", "compression"), [("14", None), ("15", None), ("16", "zstd:1"), ("17", "zstd:1")])
def test_backup_job_of_a_16_plus_source_dumps_with_zstd_on_that_majors_image(major, compression):
    image, source = records_of_major(major)
    blob = BlobStorageResource(connection_string=AZURITE)
    spec = backup_job_spec(image, source, blob, timeout_seconds=3600)
    platform = KubernetesPlatform(job_images=JOB_IMAGES)
    job = m.job(spec, platform.settings(), "toygres-scripts")
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(job, version, strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DUMP_COMPRESSION"] == (compression or DEFAULT_DUMP_COMPRESSION)
    assert container["image"] == JOB_IMAGES[major]  # whose pg_dump is of that major: 16+ has zstd and lz4
