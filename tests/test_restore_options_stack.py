"""Selective restore and upgrade on restore through the Dagster job, against real PostgreSQL
(apt's 15 and the pgserver wheel's 16), Azurite and azcopy."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from records import InstanceRef, InstanceState
from resources.platform.postgres_server import postgres_bindir
from tests.conftest import SOURCE_PASSWORD
from tests.helpers import failure_text, materialize_image, run_logs
from tests.test_restore import dsn_of, platform_instances, restore, schema_dump, table_fingerprints
from toygres_pipelines.dev.demo import provision_server, register_running

pytestmark = pytest.mark.integration

# Quotes, `=` (a bare libpq dbname holding it is a connection string), a line break, non-ASCII.
ODD_NAME = "sales 'q3' \"eu\"=x\nnext line ü"
TWO_DB_PASSWORD = "two-db-Pw"


@pytest.fixture(scope="module")
def two_db_ref(platform) -> InstanceRef:
    """A server holding two databases (`alpha` and ODD_NAME) and a login role."""
    return provision_two_databases(platform, InstanceRef(k8s_name="two-dbs", namespace="default"))


def provision_two_databases(platform, ref: InstanceRef) -> InstanceRef:
    """A new server `ref` holding two databases (`alpha` and ODD_NAME) and a login role."""
    provision_server(platform, ref, SecretStr(TWO_DB_PASSWORD))
    endpoints = platform.endpoints(ref)
    admin = psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=TWO_DB_PASSWORD, dbname="postgres"
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE ROLE selective_reader LOGIN PASSWORD 'reader-pw'")
        for name, rows in (("alpha", 3), (ODD_NAME, 2)):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            with psycopg.connect(psycopg.conninfo.make_conninfo(admin, dbname=name)) as db:
                db.execute("CREATE TABLE items (id int PRIMARY KEY)")
                db.execute("INSERT INTO items SELECT generate_series(1, %s)", [rows])
    return ref


def databases_of(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")}


def test_one_database_of_a_two_database_image_is_restored_alone(resources, cms, platform, two_db_ref):
    source = register_running(cms, platform, two_db_ref)
    made = materialize_image(resources, f"{source.k8s_name}__two")
    assert made.success
    image = cms.images.find(f"{source.k8s_name}__two")
    # The image's metadata lists its databases with their sizes.
    [materialization] = made.asset_materializations_for_node("image")
    listed = {r.data["database"]: r.data for r in materialization.metadata["databases"].value.records}
    assert set(listed) == {"alpha", ODD_NAME, "postgres"}
    assert all(entry["size_bytes"] > 0 and entry["size"] for entry in listed.values())

    dagster = dg.DagsterInstance.ephemeral()
    result = restore(
        resources,
        source_image_id=image.name,
        databases=[ODD_NAME],
        name="only-odd",
        dns_label="only-odd",
        instance=dagster,
    )
    assert result.success, failure_text(result)
    row = cms.instances.get(result.output_for_node("mark_instance_running").id)
    restored = lambda db: dsn_of(platform, row, TWO_DB_PASSWORD, db)  # noqa: E731
    assert databases_of(restored("postgres")) == {"postgres", ODD_NAME}  # alpha is absent
    with psycopg.connect(restored(ODD_NAME)) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
    reader = psycopg.conninfo.make_conninfo(restored(ODD_NAME), user="selective_reader", password="reader-pw")
    with psycopg.connect(reader) as conn:  # the roles came along
        assert conn.execute("SELECT current_user").fetchone() == ("selective_reader",)
    assert "restoring 1 of the image's databases (selected)" in run_logs(dagster, result.run_id)


def test_an_unknown_database_is_refused_before_anything_is_created(resources, cms, blob, platform, source):
    assert materialize_image(resources, f"{source.k8s_name}__pick").success
    image = cms.images.find(f"{source.k8s_name}__pick")
    volumes_before = platform_instances(platform)
    result = restore(resources, source_image_id=image.name, databases=["pagila", "nope"])
    assert not result.success
    held = ", ".join(repr(f.database) for f in blob.read_manifest(image.blob_path)[0].files if f.database)
    assert {"'pagila'", "'postgres'"} <= set(held.split(", "))
    assert (
        f"Invalid restore request: databases: 'nope': no such database in the image; image {image.name!r} holds: "
        f"{held}" in failure_text(result)
    )
    assert cms.instances.list() == [cms.instances.get(source.id)]  # no instance row
    assert platform_instances(platform) == volumes_before  # no volume, no secret, no server


def test_a_postgresql_15_image_restores_into_16_with_full_fidelity(resources, cms, platform, source, source_dsn):
    assert materialize_image(resources, f"{source.k8s_name}__to-16").success
    image = cms.images.find(f"{source.k8s_name}__to-16")
    assert image.postgres_version == "15"

    dagster = dg.DagsterInstance.ephemeral()
    result = restore(
        resources,
        source_image_id=image.name,
        postgres_version="16",
        name="pagila-16",
        dns_label="pagila-16",
        instance=dagster,
    )
    assert result.success, failure_text(result)
    row = cms.instances.get(result.output_for_node("mark_instance_running").id)
    assert row.state is InstanceState.running
    assert (row.postgres_version, row.source_postgres_version) == ("16", "15")  # the CMS records both
    restored = lambda db: dsn_of(platform, row, SOURCE_PASSWORD, db)  # noqa: E731
    with psycopg.connect(restored("postgres")) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("16")
    with psycopg.connect(source_dsn("postgres")) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")
    assert "upgraded from PostgreSQL 15" in run_logs(dagster, result.run_id)

    # pagila's fidelity checks, both sides read by PostgreSQL 16's pg_dump (15's cannot read a 16 server)
    newer = postgres_bindir("16")
    assert schema_dump(restored("pagila"), newer) == schema_dump(source_dsn("pagila"), newer)
    source_tables = table_fingerprints(source_dsn("pagila"))
    assert len(source_tables) >= 22 and source_tables["rental"][0] > 16000
    assert table_fingerprints(restored("pagila")) == source_tables
    app = psycopg.conninfo.make_conninfo(restored("pagila"), user="pagila_app", password="pagila-app")
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT count(*) FROM film").fetchone()[0] == 1000

    # The upgraded instance is a source like any other: its backup is taken and verified with 16's tools.
    backup = materialize_image(resources, f"{row.k8s_name}__on-16")
    assert backup.success, failure_text(backup)
    upgraded = cms.images.find(f"{row.k8s_name}__on-16")
    assert upgraded.postgres_version == "16"
    manifest, _ = resources["blob"].read_manifest(upgraded.blob_path)
    assert manifest.postgres_version == "16" and "16." in manifest.tools["pg_dump"]
