"""`drill` and `reverify`: the CLI launches the restore_drill / reverify_image jobs through the
Dagster webserver's GraphQL API, after the same checks the jobs make, so a refused launch never
becomes a run."""

from __future__ import annotations

import psycopg
import pytest

from resources.platform.postgres_server import free_port
from tests.helpers import add_instance
from tests.test_cli_lifecycle import run  # noqa: F401 - a fixture
from tests.test_lifecycle import stored_image

pytestmark = pytest.mark.integration


@pytest.fixture
def source(cms):
    return add_instance(cms, "app-runs")


@pytest.fixture
def nowhere(monkeypatch):
    """A Dagster URL nothing listens on: a launch that got that far would exit 3."""
    monkeypatch.setenv("TOYGRES_DAGSTER_URL", f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("command", ["drill", "reverify"])
def test_a_malformed_image_reference_is_refused_naming_the_field_and_the_rule(run, nowhere, command):  # noqa: F811
    code, out, err = run(command, "Bad Name!; drop")
    assert code == 2 and out == ""
    assert err == "error: image: 'Bad Name!; drop' must be 1-100 characters of letters, digits, '_' or '-'\n"


@pytest.mark.parametrize("command", ["drill", "reverify"])
def test_an_unknown_image_is_refused_before_any_launch(run, nowhere, command):  # noqa: F811
    code, _, err = run(command, "app-runs__nosuch")
    assert code == 2
    assert err == "error: image: no image 'app-runs__nosuch' (an image id or name)\n"


def test_only_a_ready_image_is_drilled_and_only_a_corrupt_one_reverified(run, nowhere, cms, blob, source):  # noqa: F811
    ready = stored_image(cms, blob, source, "app-runs__ready", days_old=1)
    corrupt = stored_image(cms, blob, source, "app-runs__bad", days_old=1)
    with psycopg.connect(cms.dsn) as conn:
        conn.execute("UPDATE toygres_cms.images SET state = 'corrupt' WHERE id = %s", (corrupt.id,))
    code, _, err = run("drill", corrupt.name)
    assert code == 2 and err.startswith("error: image: ") and "corrupt" in err and "ready" in err
    code, _, err = run("reverify", ready.name)
    assert code == 2 and err.startswith("error: image: ") and "only a corrupt image" in err


def test_an_unreachable_dagster_webserver_exits_3_naming_the_setting(run, nowhere, cms, blob, source):  # noqa: F811
    ready = stored_image(cms, blob, source, "app-runs__ready", days_old=1)
    code, out, err = run("drill", ready.name)
    assert code == 3 and out == ""
    assert "TOYGRES_DAGSTER_URL" in err and "cannot reach the Dagster webserver" in err
