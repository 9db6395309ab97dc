"""The options of every session the deployment's Python code opens on a tenant's server.

The tenant is the superuser of its instance: it owns its roles' and databases' settings
(ALTER ROLE/DATABASE ... SET; an image carries them, a restore brings them back) and they apply to
every session that logs in. Options given at connection win over them, so a session opened with
these neither looks up the tenant's schemas ahead of pg_catalog (a view named pg_class, its own
count(*)), nor switches to a role of the tenant's choosing (SET role), nor answers in another
DateStyle (psycopg parses timestamps in ISO only), nor runs read-only or under the tenant's timeouts
or temporary file limit, nor reads a damaged page as empty, nor loads its libraries, nor logs its
statements. templates/scripts/common.sh (TENANT_SESSION_OPTIONS) sets the same for the job scripts.
The encoding is apart: the scripts' catalogue queries read names as bytes, psycopg reads UTF8.
"""

from __future__ import annotations

TENANT_SESSION_OPTIONS = (
    "-c search_path=pg_catalog -c role=none -c DateStyle=ISO -c default_transaction_read_only=off"
    " -c statement_timeout=0"
    " -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 -c idle_session_timeout=0 -c temp_file_limit=-1"
    " -c zero_damaged_pages=off -c ignore_checksum_failure=off"
    " -c session_preload_libraries= -c local_preload_libraries= -c log_statement=none"
    " -c log_min_duration_statement=-1 -c default_tablespace= -c temp_tablespaces="
)


def tenant_session_options(statement_timeout_ms: int = 0) -> str:
    """The options, with a statement timeout of the deployment's own (0: none) in place of the tenant's."""
    return f"{TENANT_SESSION_OPTIONS} -c client_encoding=UTF8 -c statement_timeout={int(statement_timeout_ms)}"
