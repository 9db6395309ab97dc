"""`images --show` and `request-restore --database/--postgres-version` against a real image
(PostgreSQL, Azurite, azcopy)."""

from __future__ import annotations

import json

import pytest

from records import RequestState, RestoreRequest
from tests.helpers import cli_runner, materialize_image
from toygres_pipelines import cli


@pytest.fixture
def run(cms, blob, stack, monkeypatch, capsys):
    """main([...]) in process, with the test's CMS and blob container in the environment."""
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    monkeypatch.delenv(cli.KEY_ENV, raising=False)
    monkeypatch.setenv("TOYGRES_PLATFORM", "local")
    monkeypatch.setenv("TOYGRES_BLOB_CONNECTION_STRING", stack.azurite.connection_string)
    monkeypatch.setenv("TOYGRES_BLOB_CONTAINER", blob.container)

    return cli_runner(capsys)


@pytest.fixture
def image(resources, cms, source):
    assert materialize_image(resources, f"{source.k8s_name}__cli").success
    return cms.images.find(f"{source.k8s_name}__cli")


def test_images_show_lists_the_databases_with_their_sizes(run, image, blob):
    manifest, _ = blob.read_manifest(image.blob_path)
    sizes = {f.database: f.size_bytes for f in manifest.files if f.kind == "database"}
    code, out, err = run("images", "--show", image.name)
    assert code == 0, err
    assert f"image {image.name} ({image.id}): ready, PostgreSQL 15" in out
    rows = {
        line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["pagila"], ["postgres"])
    }
    rows_of = {d: sum(c.values()) for d, c in manifest.row_counts_by_database().items() if c is not None}
    assert set(rows) == {"pagila", "postgres"} and rows["pagila"][-1] == str(rows_of["pagila"])
    assert rows_of["pagila"] > 40000 and rows["postgres"][-1] == "0"  # the manifest counted every table
    code, out, _ = run("images", "--show", str(image.id), "--json")
    shown = json.loads(out)
    assert shown["image"]["name"] == image.name
    assert {d["database"]: d["size_bytes"] for d in shown["databases"]} == sizes
    assert {d["database"]: d["rows"] for d in shown["databases"]} == rows_of
    code, _, err = run("images", "--show", "no-such-image")
    assert code == 2 and err.startswith("error: image: no image with name 'no-such-image'"), err


def test_request_restore_takes_databases_and_a_newer_major(run, cms, image):
    base = ["request-restore", "--name", "copy", "--dns-label", "copy-db", "--image", image.name]
    code, _, err = run(*base, "--database", "pagila", "--database", "nope")
    assert code == 2 and err.startswith("error: databases: 'nope': no such database in the image; image "), err
    assert "holds: 'pagila', 'postgres'" in err
    code, _, err = run(*base, "--postgres-version", "14")
    assert code == 2 and err.startswith("error: postgres_version: 14 is older than PostgreSQL 15"), err
    assert cms.requests.list(RestoreRequest) == []

    code, _, err = run(*base, "--database", "pagila", "--postgres-version", "16")
    assert code == 0, err
    [request] = cms.requests.list(RestoreRequest)
    assert (request.state, request.databases, request.postgres_version) == (RequestState.pending, ["pagila"], "16")
