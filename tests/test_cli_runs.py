"""`drill` and `reverify`: the CLI launches the restore_drill / reverify_image jobs through the
Dagster webserver's GraphQL API, after the same checks the jobs make, so a refused launch never
becomes a run."""

from __future__ import annotations

import psycopg
import pytest

from records import ValidationFailed
from resources.platform.postgres_server import free_port
from tests.helpers import add_instance
from tests.test_cli_lifecycle import run  # noqa: F401 - a fixture
from tests.test_lifecycle import stored_image
from toygres_pipelines.cli.exits import DagsterUnavailable
from toygres_pipelines.cli.runs import Webserver
from toygres_pipelines.cli.settings import dagster_url
from toygres_pipelines.shared.webserver import DAGSTER_URL_RULE


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


@pytest.mark.parametrize(
    ("flag", "environ", "url"),
    [
        (None, {}, "http://127.0.0.1:3000"),
        (None, {"TOYGRES_DAGSTER_URL": ""}, "http://127.0.0.1:3000"),
        (None, {"TOYGRES_DAGSTER_URL": "https://dagster.example.com"}, "https://dagster.example.com"),
        (None, {"TOYGRES_DAGSTER_URL": "http://10.0.0.7:3000/dagster/"}, "http://10.0.0.7:3000/dagster"),
        (None, {"TOYGRES_DAGSTER_URL": "http://[::1]:3000"}, "http://[::1]:3000"),
        ("http://localhost:4000", {"TOYGRES_DAGSTER_URL": "http://elsewhere:3000"}, "http://localhost:4000"),
    ],
)
def test_the_dagster_url_comes_from_the_flag_then_the_environment_then_the_default(flag, environ, url):
    assert dagster_url(flag, environ) == url


@pytest.mark.parametrize(
    "value",
    [
        "ftp://127.0.0.1:3000",
        "127.0.0.1:3000",
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://127.0.0.1:3000/graphql?x=1",
        "http://127.0.0.1:3000/#top",
        "http://bad_host:3000",
        "http://127.0.0.1:3000 ",
        "http://127.0.0.1:3000\n",
    ],
)
def test_a_malformed_dagster_url_is_refused_naming_the_variable_and_the_rule(value):
    with pytest.raises(ValidationFailed) as refused:
        dagster_url(None, {"TOYGRES_DAGSTER_URL": value})
    assert refused.value.field == "TOYGRES_DAGSTER_URL"
    assert refused.value.rule == f"{value!r} {DAGSTER_URL_RULE} (e.g. http://127.0.0.1:3000)"


@pytest.mark.parametrize("value", ["http://admin:s3cret@127.0.0.1:3000", "http://s3cret@127.0.0.1:3000"])
def test_a_dagster_url_with_a_credential_is_refused_without_echoing_it(value):
    with pytest.raises(ValidationFailed) as refused:
        dagster_url(value, {})
    assert refused.value.field == "--dagster-url"
    assert "s3cret" not in str(refused.value) and "admin" not in str(refused.value)


def test_a_token_in_the_dagster_url_is_refused_before_any_launch_and_never_echoed(run, cms, blob, source, monkeypatch):  # noqa: F811
    ready = stored_image(cms, blob, source, "app-runs__ready", days_old=1)
    monkeypatch.setenv("TOYGRES_DAGSTER_URL", f"http://t0ken-value@127.0.0.1:{free_port()}")
    code, out, err = run("drill", ready.name)
    assert code == 2 and out == ""
    assert err.startswith("error: TOYGRES_DAGSTER_URL: (not shown: it may hold a credential) must be http(s)://")
    assert "t0ken-value" not in err


def test_a_webserver_gone_while_waiting_exits_3_not_unexpected():
    """--wait reads the run's events with the gql client over the launch's transport: a webserver
    that went away is unreachable (exit 3), like one that was never there."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DagsterUnavailable, match=r"cannot reach the Dagster webserver \(TOYGRES_DAGSTER_URL"):
        Webserver(url).run_logs("0f2c1d7e-0000-4000-8000-000000000000", None)
