"""Fleet scale: the scale bench in a tiny configuration (so it cannot rot), and the automation's
reads of the CMS bounded whatever the size of the fleet (no query per instance or per image)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
import pytest

from records import ImageType, InstanceState
from resources.cms import CMSResource
from resources.platform.local import LocalPlatform
from toygres_pipelines.images.schedules import nightly_run_requests

RULES_ONLY = LocalPlatform(state_dir="/nonexistent/toygres-rules-only", azcopy_path="/bin/true")
CONNECTIONS: list[int] = []


class CountingCMS(CMSResource):
    """The CMS resource, counting the connections it opens (one per repository call)."""

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        CONNECTIONS.append(1)
        with super().connection() as conn:
            yield conn


@pytest.fixture
def counting(cms) -> CountingCMS:
    CONNECTIONS.clear()
    return CountingCMS(dsn=cms.dsn, encryption_key=cms.encryption_key)


def add_running(cms: CMSResource, count: int, namespace: str = "default") -> None:
    for n in range(count):
        cms.instances.create(
            user_name=f"fleet-{namespace}-{n}",
            k8s_name=f"fleet-{namespace}-{n}",
            namespace=namespace,
            postgres_version="15",
            storage_size_gb=1,
            use_load_balancer=False,
            dns_name=None,
            image_type=ImageType.stock,
            state=InstanceState.running,
        )


def test_the_nightly_tick_reads_the_instances_once_whatever_the_fleet_size(cms, counting):
    add_running(cms, 6)
    requests = nightly_run_requests(dg.DagsterInstance.ephemeral(), counting, RULES_ONLY, None, "UTC")
    assert len(requests) == 6
    assert len(CONNECTIONS) == 2  # the running instances, and the running drills (their scratch instances)


def test_the_nightly_tick_asks_the_dagster_instance_nothing_per_partition(cms, monkeypatch):
    """The tick adds the night's partitions itself; Dagster then need not look each key up again
    (one storage query per run request: 17 s for 2,000 instances on the dev stack's SQLite)."""
    from tests.helpers import schedule_named
    from toygres_pipelines.definitions import defs
    from toygres_pipelines.domains import domain_definitions
    from toygres_pipelines.settings import Settings

    add_running(cms, 6)
    lookups: list[str] = []
    looked_up = dg.DagsterInstance.has_dynamic_partition

    def counted(self, partitions_def_name: str, partition_key: str) -> bool:
        lookups.append(partition_key)
        return looked_up(self, partitions_def_name, partition_key)

    monkeypatch.setattr(dg.DagsterInstance, "has_dynamic_partition", counted)
    nightly = schedule_named(domain_definitions(Settings()), "nightly_backups")
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(
            instance_ref=instance.get_ref(),
            resources={"cms": cms, "platform": RULES_ONLY},
            repository_def=defs.get_repository_def(),
        ) as context:
            requests = nightly.evaluate_tick(context).run_requests
        assert requests is not None and len(requests) == 6
        assert lookups == []
        partitions = set(instance.get_dynamic_partitions("images"))
        for request in requests:
            assert request.tags["dagster/partition"] == request.partition_key == request.run_key
            assert request.partition_key in partitions


def test_images_in_use_are_found_by_id_or_by_live_name_in_a_large_catalogue():
    """The lookup that replaced a scan of the whole catalogue per request: the same answers."""
    import uuid

    from records import ImageState, RequestState, RestoreRequest
    from records.lifecycle import images_in_use
    from tests.test_retention_policy import NOW, catalogue

    images = catalogue()
    named, by_id = images[0], images[1]
    gone = images[2].model_copy(update={"name": named.name, "state": ImageState.deleted})
    images[2] = gone
    requests = [
        RestoreRequest(
            id=uuid.UUID(int=n),
            state=state,
            name="r",
            dns_label="rrr",
            source_image_id=ref,
            created_at=NOW,
            updated_at=NOW,
        )
        for n, state, ref in (
            (1, RequestState.accepted, named.name),
            (2, RequestState.pending, str(by_id.id)),
            (3, RequestState.pending, str(by_id.id)),
            (4, RequestState.failed, images[3].name),
        )
    ]
    used = images_in_use(images, requests, [])
    assert used == {
        named.id: f"source_image_id of accepted restore request {uuid.UUID(int=1)}",
        by_id.id: f"source_image_id of pending restore request {uuid.UUID(int=2)}",
    }


# The fleet's frequent reads, as the repositories issue them (resources/cms): each must find its
# rows through an index, whatever the planner would choose for a table as small as a test's.
INDEXED_READS = {
    "a page of images (toygres-pipelines images)": (
        "SELECT * FROM toygres_cms.images ORDER BY created_at, id LIMIT 50 OFFSET 50",
        [],
    ),
    "in-flight restore requests (in use, reconciler)": (
        "SELECT * FROM toygres_cms.restore_requests WHERE state = ANY(%s) ORDER BY created_at, id",
        [["pending", "accepted"]],
    ),
    "accepted image requests (request sensor, reconciler)": (
        "SELECT * FROM toygres_cms.image_requests WHERE state = %s ORDER BY created_at, id",
        ["accepted"],
    ),
    "the instance of a repeated restore request": (
        "SELECT * FROM toygres_cms.instances WHERE tags ->> %s = %s",
        ["request_key", "k"],
    ),
}


@pytest.mark.parametrize("read", sorted(INDEXED_READS))
def test_the_fleet_reads_are_served_by_an_index(cms, read):
    query, params = INDEXED_READS[read]
    with psycopg.connect(cms.dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params).fetchall())
    assert "Seq Scan" not in plan, plan
    if "ORDER BY created_at, id LIMIT" in query:  # a page: read in the index's order, never sorted whole
        assert "Sort" not in plan, plan
    else:
        assert "Index Cond" in plan, plan


# ---- the scale bench, tiny ----------------------------------------------------------------------


@pytest.mark.integration
def test_the_scale_bench_runs_end_to_end_in_a_tiny_configuration(tmp_path, capsys):
    """bench/fleet_scale.py with 50 instances and 500 images: every operation runs and does its work."""
    import json

    from bench import fleet_scale

    fleet_scale.main(["--instances", "50", "--images", "500", "--repeat", "1", "--json", str(tmp_path / "scale.json")])
    report = json.loads((tmp_path / "scale.json").read_text())
    assert report["fleet"]["instances"]["running"] == 50
    assert sum(report["fleet"]["images"].values()) == 500
    results = {t["operation"]: t["result"] for t in report["timings"]}
    assert set(results) == {
        "nightly_backups tick",
        "image_requests_sensor tick",
        "restore_requests_sensor tick",
        "reconcile_stuck_rows tick",
        "request_run_started tick",
        "run_succeeded_writeback tick",
        "run_failed_writeback tick",
        "run_canceled_writeback tick",
        "retention plan",
        "toygres-pipelines images",
        "toygres-pipelines images --page 10",
        "toygres-pipelines images --limit 0",
    }
    assert results["nightly_backups tick"] == "50 run request(s)"
    # the pending requests (20 of each kind) are accepted; the reconciler finds every run still going
    assert results["image_requests_sensor tick"] == results["restore_requests_sensor tick"] == "20 run request(s)"
    assert results["reconcile_stuck_rows tick"].startswith("skipped: 0 run(s) settled")
    planned = 500 - report["fleet"]["images"]["creating"] - report["fleet"]["images"].get("deleted", 0)
    assert results["retention plan"].startswith(f"{planned} image(s) planned")
    assert results["toygres-pipelines images"].endswith("images 1-50 of 500 (page 1 of 10): the next page is --page 2")
    assert results["toygres-pipelines images --page 10"].endswith("images 451-500 of 500 (page 10 of 10)")
    assert results["toygres-pipelines images --limit 0"].startswith("501 line(s)")
    assert "nightly_backups tick" in capsys.readouterr().out
