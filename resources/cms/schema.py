"""Versioned migrations (`resources/migrations/NNN_name.sql`), applied under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from resources.cms.errors import MigrationError
from resources.cms.queries import Queries, fetch_one
from resources.cms.tables import SCHEMA

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
MIGRATION_FILE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
# pg_advisory_lock key for migrations ("toygres" in ASCII); advisory locks are per database.
MIGRATION_LOCK_KEY = 0x746F7967726573


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.fullmatch(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_lowercase_name.sql")
        found.append(Migration(version=match.group(1), name=match.group(2), path=path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}: {versions}")
    return found


class Migrations(Queries):
    """cms.migrations: apply() and applied()."""

    def apply(self) -> list[str]:
        """Apply the missing migrations, in order; returns the versions applied by this call.

        Safe to run concurrently from several processes: a session advisory lock serializes
        them, and each migration commits together with its schema_migrations row.
        """
        available = migrations()
        applied_now: list[str] = []
        with self.autocommit_connection() as conn:
            conn.execute("SET lock_timeout = '120s'")
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} ("
                            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                            " applied_at timestamptz NOT NULL DEFAULT now())"
                        ).format(sql.Identifier(SCHEMA, "schema_migrations"))
                    )
                done = {
                    version: checksum
                    for version, checksum in conn.execute(
                        sql.SQL("SELECT version, checksum FROM {}").format(sql.Identifier(SCHEMA, "schema_migrations"))
                    ).fetchall()
                }
                for migration in available:
                    if migration.version in done:
                        if done[migration.version] != migration.checksum:
                            raise MigrationError(
                                f"migration {migration.path.name} changed after it was applied;"
                                " add a new migration instead of editing an applied one"
                            )
                        continue
                    with conn.transaction():
                        conn.execute(migration.text)  # no parameters: several statements allowed
                        conn.execute(
                            sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                                sql.Identifier(SCHEMA, "schema_migrations")
                            ),
                            (migration.version, migration.name, migration.checksum),
                        )
                    applied_now.append(migration.version)
            finally:
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        return applied_now

    def applied(self) -> list[str]:
        with self.connection() as conn:
            exists = fetch_one(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_migrations",)))[0]
            if not exists:
                return []
            rows = conn.execute(
                sql.SQL("SELECT version FROM {} ORDER BY version").format(sql.Identifier(SCHEMA, "schema_migrations"))
            ).fetchall()
        return [row[0] for row in rows]
