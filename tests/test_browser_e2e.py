"""The UI as an operator sees it, in a real browser: Debian's Chromium driven by Playwright against a
webserver and daemon of the chart's topology (toygres_pipelines/dev/topology.py: PostgreSQL storage,
a gRPC code server; the instance config `make dev` ships) on free ports.

Walks the Catalog's `image` asset (partitions with their status, the Checks tab), a mistyped
partition materialized from the asset page (refused in the launch dialog: no run, nothing red), the
restore launchpad (scaffolded with every optional field's default, no resource settings, filled,
launched), the finished run with every step green, and a bad request refused in the launch dialog.
Screenshots land in the test's tmp dir (docs/screenshots/ holds a few).
Skipped only when Chromium (apt package `chromium`, installed by `make tools`) is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.dagster_run import RunsFilter
from dagster_graphql import DagsterGraphQLClient

from records import InstanceState
from resources.platform.postgres_server import free_port
from tests.helpers import materialize_image
from tests.test_daemon_e2e import dagster_instance, topology  # noqa: F401 - topology is a fixture
from toygres_pipelines.dev.topology import DagsterTopology
from toygres_pipelines.domains import domain_definitions
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import restore_config_of, restore_form_run_config
from toygres_pipelines.settings import Settings

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EDITOR_TEXT = "document.querySelector('.CodeMirror').CodeMirror.getValue()"
RUN_SECONDS = 240_000  # Playwright timeouts are in ms
# Where README's screenshots come from: TOYGRES_SCREENSHOTS_DIR=docs/screenshots copies them there.
SCREENSHOTS_ENV = "TOYGRES_SCREENSHOTS_DIR"


@pytest.fixture
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make tools does) to run the browser test")
    return pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")


@contextmanager
def browser_page(playwright_api, tmp_path: Path):
    """A fresh Chromium profile; opened after any in-process Dagster run (Playwright runs an event loop)."""
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path))
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def launch_from_the_launchpad(page, base: str, config: dict, tmp_path: Path, scaffold_first: bool = True) -> str:
    """(Scaffold and fill in the scaffold, or) write the config, launch; returns the run id the UI navigated to."""
    fill_the_launchpad(page, base, config, tmp_path, scaffold_first)
    page.wait_for_url("**/runs/**")
    return page.url.rstrip("/").split("/runs/")[-1].split("?")[0]


def fill_the_launchpad(page, base: str, config: dict, tmp_path: Path, scaffold_first: bool) -> None:
    page.goto(f"{base}/locations/toygres_pipelines/jobs/restore_instance/playground")
    page.wait_for_selector(".CodeMirror")
    if scaffold_first:
        document = yaml.safe_load(scaffold_missing_config(page, tmp_path))
        filled = RestoreConfig.model_construct(**{**restore_config_of(document), **config})
        text = yaml.safe_dump(restore_form_run_config(filled).to_config_dict(), sort_keys=False)
    else:
        text = json.dumps(restore_form_run_config(RestoreConfig.model_construct(**config)).to_config_dict(), indent=2)
    page.evaluate("config => document.querySelector('.CodeMirror').CodeMirror.setValue(config)", text)
    page.get_by_role("button", name="Launch Run").click()


def refused_in_the_launch_dialog(page, first_line: str, tmp_path: Path, name: str) -> None:
    """The launch dialog's error: its first line is the field, the rule and the value; no stack trace."""
    header = page.locator("h3", has_text=first_line).first
    header.wait_for()
    assert header.inner_text().startswith(first_line), header.inner_text()
    assert "Traceback" not in page.locator("body").inner_text() and 'File "' not in page.locator("body").inner_text()
    shoot(page, tmp_path, name)


ASSET_STATE = """
query {
  assetNodeOrError(assetKey: {path: ["image"]}) {
    __typename
    ... on AssetNode {
      partitionStats { numFailed numMaterialized }
      assetChecksOrError {
        __typename
        ... on AssetChecks { checks { name executionForLatestMaterialization { status } } }
      }
    }
  }
  assetsLatestInfo(assetKeys: [{path: ["image"]}]) { latestRun { id status } }
}
"""


def assert_nothing_red(port: int) -> None:
    """What the UI shows of the `image` asset: no failed partition, no failed check, no failed latest run."""
    state = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)._execute(ASSET_STATE)
    node = state["assetNodeOrError"]
    assert node["partitionStats"]["numFailed"] == 0, node
    statuses = {
        c["name"]: (c["executionForLatestMaterialization"] or {}).get("status")
        for c in node["assetChecksOrError"]["checks"]
    }
    assert not {"FAILED", "EXECUTION_FAILED"} & set(statuses.values()), statuses
    [latest] = state["assetsLatestInfo"]
    assert (latest["latestRun"] or {}).get("status") != "FAILURE", latest


def materialize_a_new_partition_from_the_asset_page(page, base: str, key: str, tmp_path: Path) -> None:
    """Materialize on the Catalog's `image` asset, "Add a partition" (the key typed in), launch."""
    page.goto(f"{base}/assets/image")
    page.locator("button", has_text="Materialize").first.click()
    page.get_by_text("Add a partition").first.click()
    page.get_by_placeholder("name").fill(key)
    page.get_by_role("button", name="Save").click()
    launch = page.get_by_role("button", name="Launch 1 run")
    shoot(page, tmp_path, "materialize-new-partition")
    launch.click()


def scaffold_missing_config(page, tmp_path: Path) -> str:
    """What a new user does first: the launchpad opens with every optional field's default (and no
    resource settings: those are the deployment's), the required ones are scaffolded; returns the text."""
    scaffold = page.get_by_role("button", name="Scaffold missing config")
    deadline = time.monotonic() + 60
    while not scaffold.is_enabled():  # enabled once the launchpad has validated the defaults
        assert time.monotonic() < deadline, "the launchpad never found the required fields missing"
        page.wait_for_timeout(200)
    scaffold.click()
    page.get_by_text("ops.validate_request.config.source_image_id").first.wait_for()  # the dialog lists them
    shoot(page, tmp_path, "launchpad-scaffold-missing-config")
    page.get_by_role("button", name="Confirm").click()
    # (polled from here: the UI's content security policy forbids wait_for_function's eval)
    deadline = time.monotonic() + 30
    while "source_image_id" not in (scaffolded := page.evaluate(EDITOR_TEXT)) and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    for field in ("name", "dns_label", "source_image_id", "namespace", "databases", "postgres_version"):
        assert f"{field}:" in scaffolded, scaffolded
    for absent in ("resources:", "azcopy", "runtime_image_id", "image_override"):
        assert absent not in scaffolded, scaffolded
    return scaffolded


def wait_for_run(dagster: DagsterTopology, run_id: str, monkeypatch) -> dg.DagsterRun:
    deadline = time.monotonic() + RUN_SECONDS / 1000
    with dagster_instance(dagster, monkeypatch) as instance:
        while True:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return run
            assert time.monotonic() < deadline, f"run {run_id} is still {run.status if run else 'unknown'}"
            time.sleep(1)


def fleet_checks_job(resources) -> dg.JobDefinition:
    """check_freshness as the deployment defines it, with the test's resources."""
    return dg.Definitions.merge(domain_definitions(Settings()), dg.Definitions(resources=resources)).resolve_job_def(
        "check_freshness"
    )


# A backup, a restore launched from the UI and every page after it, through a real daemon and
# browser: three loaded clean-clone suites at once took it past the default 300 s (each step done).
@pytest.mark.timeout(900)
def test_an_operator_backs_up_and_restores_through_the_ui(
    chromium,
    topology,  # noqa: F811 - the fixture imported above
    resources,
    cms,
    source,
    tmp_path,
    monkeypatch,  # noqa: F811
):
    image_name = f"{source.k8s_name}__before-upgrade"
    with dagster_instance(topology, monkeypatch) as instance:
        assert materialize_image(resources, image_name, instance=instance).success

    port = free_port()
    topology.start_daemon()
    topology.start_webserver("127.0.0.1", port)
    with browser_page(chromium, tmp_path) as page:
        base = f"http://127.0.0.1:{port}"

        # The Catalog's image asset: its partitions, each with its status
        page.goto(f"{base}/assets/image?view=partitions")
        page.get_by_text(image_name).first.click()
        page.get_by_text("manifest_sha256").first.wait_for()
        shoot(page, tmp_path, "catalog-image-partitions")

        # The Checks tab: every image's verification
        page.goto(f"{base}/assets/image?view=checks")
        page.get_by_text("verified").first.wait_for()
        shoot(page, tmp_path, "catalog-image-checks")

        # A mistyped partition: refused in the launch dialog; no run, no partition, nothing red
        materialize_a_new_partition_from_the_asset_page(page, base, "nosuch__x", tmp_path)
        refused_in_the_launch_dialog(
            page,
            "Invalid backup request: source_instance: no instance 'nosuch' in the CMS",
            tmp_path,
            "materialize-mistyped-partition-refused",
        )
        with dagster_instance(topology, monkeypatch) as instance:
            assert instance.get_runs(RunsFilter(tags={"dagster/partition": "nosuch__x"})) == []
            assert not instance.has_dynamic_partition("images", "nosuch__x")
        assert_nothing_red(port)
        page.goto(f"{base}/assets/image")
        page.get_by_text("Latest materialization").first.wait_for()
        shoot(page, tmp_path, "catalog-image-after-refusal")

        # The restore launchpad: scaffolded, the scaffold filled in (a major written as 16), launched;
        # the run ends with every step green
        run_id = launch_from_the_launchpad(
            page,
            base,
            {
                "name": "from-ui",
                "dns_label": "from-ui",
                "source_image_id": image_name,
                "storage_size_gb": 1,
                "postgres_version": int(source.postgres_version),
            },
            tmp_path,
        )
        run = wait_for_run(topology, run_id, monkeypatch)
        assert run.status is dg.DagsterRunStatus.SUCCESS
        page.goto(f"{base}/runs/{run_id}")
        page.get_by_text("toygres-pipelines connect").first.wait_for()
        shoot(page, tmp_path, "restore-run-succeeded")
        restored = cms.instances.find_by_run(run_id)
        assert restored.state is InstanceState.running and restored.user_name == "from-ui"
        with dagster_instance(topology, monkeypatch) as instance:
            steps = instance.get_run_step_stats(run_id)
        assert len(steps) == 10 and {s.status.value for s in steps} == {"SUCCESS"}, steps

        # A bad request: refused in the launch dialog, naming the field, the rule and the value; no run
        fill_the_launchpad(
            page, base, {"name": "Bad_Name", "dns_label": "bad-name", "source_image_id": image_name}, tmp_path, False
        )
        refused_in_the_launch_dialog(
            page,
            "Invalid restore request: name: 'Bad_Name' must be a DNS-1123 label",
            tmp_path,
            "restore-bad-request-refused",
        )
        with dagster_instance(topology, monkeypatch) as instance:
            assert [r.run_id for r in instance.get_runs(RunsFilter(job_name="restore_instance"))] == [run_id]
        assert_nothing_red(port)

        # The fleet on one page: the fleet asset's backups_fresh check, its table of every instance
        with dagster_instance(topology, monkeypatch) as instance:
            checked = fleet_checks_job(resources).execute_in_process(instance=instance)
        assert checked.success
        page.goto(f"{base}/assets/fleet?view=checks")
        page.get_by_text("backups_fresh").first.click()
        page.get_by_text("newest_image").first.wait_for()
        page.get_by_text(image_name).first.wait_for()
        shoot(page, tmp_path, "fleet-table")
        topology.check_running()
