"""`toygres-pipelines images` a page at a time: page boundaries, a stable order, bad input named."""

from __future__ import annotations

import json

import psycopg
import pytest

from records import ImageState
from tests.helpers import cli_runner
from tests.test_cli import add_image, add_instance
from toygres_pipelines import cli
from toygres_pipelines.cli.images import IMAGES_PAGE_SIZE


@pytest.fixture
def run(cms, monkeypatch, capsys):
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)

    return cli_runner(capsys)


@pytest.fixture
def five(cms):
    """Five images created at the same instant (ties on created_at), one of them failed."""
    source = add_instance(cms, "db-pages")
    made = [add_image(cms, source, f"db-pages__{n}") for n in range(4)]
    made.append(add_image(cms, source, "db-pages__broken", state=ImageState.failed))
    with psycopg.connect(cms.dsn) as conn:
        conn.execute("UPDATE toygres_cms.images SET created_at = '2026-01-01T00:00:00Z'")
    return sorted(str(i.id) for i in made)  # with created_at tied, the order is the id's


def page(run, *args: str) -> list[str]:
    code, out, err = run("images", "--json", *args)
    assert code == 0, err
    return [image["id"] for image in json.loads(out)]


def test_pages_split_the_listing_at_their_boundaries_in_a_stable_order(run, five):
    assert page(run, "--limit", "0") == five  # 0: everything
    pages = [page(run, "--limit", "2", "--page", str(n)) for n in (1, 2, 3, 4)]
    assert pages == [five[0:2], five[2:4], five[4:5], []]
    assert page(run, "--limit", "2") == five[0:2]  # page 1 by default
    assert [page(run, "--limit", "2", "--page", "2") for _ in range(3)] == [five[2:4]] * 3


def test_a_page_counts_only_the_images_of_the_states_asked_for(run, five, cms):
    ready = [i for i in five if cms.images.get(i).state is ImageState.ready]
    assert page(run, "--state", "ready", "--limit", "3", "--page", "2") == ready[3:]
    code, out, _ = run("images", "--state", "ready", "--limit", "3")
    assert code == 0
    assert out.splitlines()[-1] == "images 1-3 of 4 (page 1 of 2): the next page is --page 2"


def test_the_table_says_which_page_it_shows_and_stays_quiet_when_all_fit(run, five):
    code, out, _ = run("images", "--limit", "2", "--page", "3")
    assert code == 0
    *rows, footer = out.splitlines()
    assert len(rows) == 2  # the header and one image
    assert footer == "images 5-5 of 5 (page 3 of 3)"
    code, out, _ = run("images", "--limit", "2", "--page", "9")
    assert code == 0 and out.splitlines()[-2:] == ["(none)", "no images on page 9: 5 images, 3 pages of 2"]
    code, out, _ = run("images")
    assert code == 0 and len(out.splitlines()) == 6 and "(page" not in out


def test_json_output_is_the_page_alone_and_says_on_stderr_that_more_exist(run, five):
    code, out, err = run("images", "--json", "--limit", "4")
    assert code == 0 and len(json.loads(out)) == 4
    assert "images 1-4 of 5" in err and "--page 2" in err
    code, out, err = run("images", "--json")
    assert code == 0 and len(json.loads(out)) == 5 and err == ""


def test_the_default_page_is_a_screenful(run, cms):
    source = add_instance(cms, "db-many")
    with psycopg.connect(cms.dsn) as conn:
        conn.execute(
            "INSERT INTO toygres_cms.images (id, name, source_instance_id, source_k8s_name, source_namespace,"
            " blob_storage_url, blob_container, blob_path, storage_size_gb, postgres_version, state)"
            " SELECT gen_random_uuid(), 'db-many__' || n, %s, 'db-many', 'default', 'http://blob', 'c',"
            " 'images/' || n, 1, '15', 'ready' FROM generate_series(1, %s) n",
            [source.id, IMAGES_PAGE_SIZE + 1],
        )
    code, out, _ = run("images")
    assert code == 0
    assert len(out.splitlines()) == 1 + IMAGES_PAGE_SIZE + 1  # header, a page, the footer
    assert out.splitlines()[-1].endswith("the next page is --page 2")
    assert len(page(run, "--page", "2")) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--limit", "-1"), "error: limit: -1 must be 0 (every image) or a positive number of images per page"),
        (("--page", "0"), "error: page: 0 must be 1 or more"),
    ],
)
def test_a_bad_page_or_limit_is_refused_naming_the_option(run, five, args, message):
    code, out, err = run("images", *args)
    assert (code, out, err.strip()) == (2, "", message)
