"""Row counts of a restored instance, keyed and selected exactly as backup.sh counts them."""

from __future__ import annotations

import psycopg
from psycopg import sql
from pydantic import SecretStr

from records.manifest import BackupManifest, table_key
from records.platform import Endpoints
from records.tenant_sessions import tenant_session_options
from toygres_pipelines.shared.connections import SUPERUSER

# The tables the archive reader counts (archive_reader.py, docs/drills.md says which and why).
COUNTED_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
   AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.deptype = 'e')
"""


def count_rows(
    endpoints: Endpoints, password: SecretStr, database: str, own_rows: bool = True, timeout_seconds: int = 60
) -> dict[str, int]:
    """Every counted table of `database` and its exact row count: each table's own rows (ONLY, as
    the archive holds them: manifest format 3), or with its inheritance children's (format 2)."""
    query = "SELECT count(*) FROM ONLY {}.{}" if own_rows else "SELECT count(*) FROM {}.{}"
    # Keywords, never one conninfo string: a database name holding `=` stays a name.
    with psycopg.connect(
        host=endpoints.check_host or endpoints.external_ip or endpoints.host,
        port=endpoints.port,
        user=SUPERUSER,
        password=password.get_secret_value(),
        dbname=database,
        sslmode=endpoints.sslmode or "prefer",
        connect_timeout=timeout_seconds,
        # the restored databases and roles keep the tenant's settings: its search_path, its timeouts
        options=tenant_session_options(),
    ) as conn:
        tables = conn.execute(COUNTED_TABLES).fetchall()
        counts = {}
        for schema, name in tables:
            row = conn.execute(sql.SQL(query).format(sql.Identifier(schema), sql.Identifier(name))).fetchone()
            counts[table_key(schema, name)] = int(row[0]) if row else 0
        return counts


def restored_counts(endpoints: Endpoints, password: SecretStr, manifest: BackupManifest) -> dict[str, dict[str, int]]:
    """The restored instance's counts of every database the manifest holds."""
    own_rows = manifest.counts_own_rows
    return {database: count_rows(endpoints, password, database, own_rows) for database in manifest.database_files()}
