"""Source instances for the embedded stack and the tests: a local server loaded with pagila."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from records import ImageType, Instance, InstanceRef, InstanceState
from records.rows import instance_columns
from resources.cms import CMSResource
from resources.platform.base import PROJECT_DIR, DeploySpec
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import postgres_bindir
from toygres_pipelines.shared.connections import SUPERUSER, connection_strings

PAGILA_FILES = ("pagila-schema.sql", "pagila-data.sql")
# The Makefile searches the same places and exports TOYGRES_PAGILA_DIR to what it found.
PAGILA_CANDIDATES = (PROJECT_DIR.parent / "shared" / "fixtures" / "pagila", Path("/work/shared/fixtures/pagila"))


def pagila_dir(environ: Mapping[str, str] | None = None) -> Path:
    """TOYGRES_PAGILA_DIR, else the first candidate holding the fixtures."""
    configured = (os.environ if environ is None else environ).get("TOYGRES_PAGILA_DIR")
    if configured:
        return Path(configured)
    return next((d for d in PAGILA_CANDIDATES if (d / PAGILA_FILES[0]).is_file()), PAGILA_CANDIDATES[0])


def psql(platform: LocalPlatform, ref: InstanceRef, *args: str, database: str = "postgres") -> str:
    endpoints = platform.endpoints(ref)
    env = {
        **os.environ,
        "PGPASSWORD": platform.read_instance_password(ref).get_secret_value(),
        "PGCONNECT_TIMEOUT": "10",
    }
    done = subprocess.run(
        [
            str(postgres_bindir() / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            endpoints.host,
            "-p",
            str(endpoints.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql {' '.join(args)[:200]} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def provision_server(platform: LocalPlatform, ref: InstanceRef, password: SecretStr | None = None) -> None:
    """A fresh, empty, running PostgreSQL instance on the local platform."""
    password = password or SecretStr(secrets.token_urlsafe(18))
    platform.ensure_instance_secret(ref, password)
    platform.create_volume(ref, 1)
    platform.server(ref, 0).initdb(SUPERUSER, password.get_secret_value())
    platform.deploy_instance(DeploySpec(instance=ref, postgres_version="15", storage_size_gb=1, dns_label=ref.k8s_name))
    platform.wait_ready(ref, 60)


class PagilaMissing(FileNotFoundError):
    pass


def load_pagila(platform: LocalPlatform, ref: InstanceRef, source: Path | None = None) -> None:
    """(Re)create database `pagila` with the sample schema and data, plus an application role."""
    source = source or pagila_dir()
    missing = [str(source / name) for name in PAGILA_FILES if not (source / name).is_file()]
    if missing:
        raise PagilaMissing(f"pagila fixtures not found: {missing} (set TOYGRES_PAGILA_DIR)")
    psql(platform, ref, "-c", "DROP DATABASE IF EXISTS pagila WITH (FORCE)")
    psql(platform, ref, "-c", "DROP ROLE IF EXISTS pagila_app")
    psql(platform, ref, "-c", "CREATE ROLE pagila_app LOGIN PASSWORD 'pagila-app'")
    psql(platform, ref, "-c", "CREATE DATABASE pagila OWNER postgres")
    for name in PAGILA_FILES:
        psql(platform, ref, "-f", str(source / name), database="pagila")
    psql(platform, ref, "-c", "REFRESH MATERIALIZED VIEW rental_by_category", database="pagila")
    psql(platform, ref, "-c", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO pagila_app", database="pagila")


def register_running(
    cms: CMSResource, platform: LocalPlatform, ref: InstanceRef, user_name: str | None = None
) -> Instance:
    """Record an instance the platform already runs as `running` in the CMS."""
    existing = cms.instances.find(ref.k8s_name)
    if existing is not None and existing.state is InstanceState.running:
        return existing
    endpoints = platform.endpoints(ref)
    instance = existing or cms.instances.create(
        **instance_columns(name=user_name or ref.k8s_name, internal=False, dns_label=ref.k8s_name),
        k8s_name=ref.k8s_name,
        namespace=ref.namespace,
        postgres_version="15",
        storage_size_gb=1,
        image_type=ImageType.stock,
    )
    strings = connection_strings(endpoints, password=None)
    return cms.instances.transition(
        instance.id,
        InstanceState.running,
        reason="registered running instance",
        ip_connection_string=strings.ip,
        dns_connection_string=strings.dns,
        external_ip=endpoints.external_ip,
    )
