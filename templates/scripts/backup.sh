#!/usr/bin/env bash
# Backup job: the instance's roles (pg_dumpall --globals-only) and one pg_dump -Fc per database,
# each streamed through sha256 straight into blob storage (no staging file), then manifest.json.
#
# Env: PGHOST PGPORT PGUSER (source superuser) BLOB_URL (image folder, no credentials)
#      IMAGE_NAME SOURCE_INSTANCE SOURCE_NAMESPACE, optional DUMP_COMPRESSION (0-9),
#      TRANSFER_STALL_SECONDS (see common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=backup
: "${PGHOST:?}" "${PGPORT:?}" "${PGUSER:?}" "${BLOB_URL:?}" "${IMAGE_NAME:?}" "${SOURCE_INSTANCE:?}" "${SOURCE_NAMESPACE:?}"
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-15}" PGDATABASE=postgres
load_secrets

work=$(mktemp -d "${TMPDIR:-/tmp}/toygres-backup.XXXXXX")
trap 'stop_background_steps; rm -rf "$work"' EXIT

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
server_version_num=$(psql -w -X -Atqc 'SHOW server_version_num') || die "cannot connect to ${SOURCE_INSTANCE} at ${PGHOST}:${PGPORT}"
postgres_version=$((server_version_num / 10000))
log "source ${SOURCE_NAMESPACE}/${SOURCE_INSTANCE} runs PostgreSQL ${postgres_version} (${server_version_num})"

# dump_progress LABEL DD_REPORT STARTED [ON_DISK_BYTES]: one line of how far a stream has come
dump_progress() {
  local bytes elapsed=$((SECONDS - $3))
  bytes=$(bytes_counted "$2")
  log "$1: $(mib "${bytes:-0}") dumped and uploaded in ${elapsed}s ($(rate "${bytes:-0}" "$elapsed"))${4:+; the database takes $(mib "$4") on disk}"
}

# stream_to_blob NAME [LABEL ON_DISK_BYTES]: stdin -> sha256 + byte count + azcopy; writes
# $work/NAME.{sha256,size}; logs its progress every PROGRESS_SECONDS and when done.
stream_to_blob() {
  local name=$1 key=${1//\//_} label=${2:-$1} on_disk=${3:-} started=$SECONDS
  mkfifo "$work/$key.hash-pipe" "$work/$key.size-pipe"
  sha256sum <"$work/$key.hash-pipe" | cut -d' ' -f1 >"$work/$key.sha256" &
  local hash_pid=$!
  # dd counts the bytes exactly and reports them as it goes (status=progress), for the progress lines
  LC_ALL=C dd bs=1M of=/dev/null status=progress <"$work/$key.size-pipe" 2>"$work/$key.count" &
  local size_pid=$!
  start_progress dump_progress "$label" "$work/$key.count" "$started" "$on_disk"
  local status=0
  tee "$work/$key.hash-pipe" "$work/$key.size-pipe" | upload_stdin "$name" || status=$?
  wait "$hash_pid" || status=$?
  wait "$size_pid" || status=$?
  stop_progress
  bytes_counted "$work/$key.count" >"$work/$key.size"
  [[ -s "$work/$key.size" ]] || status=1
  ((status != 0)) || dump_progress "$label done" "$work/$key.count" "$started" "$on_disk"
  return "$status"
}

# One JSON object per file, written by jq: any byte a database name may hold is carried exactly.
record_file() { # $1 blob name, $2 kind, $3 database (kind database only)
  local key=${1//\//_}
  jq -n -c --arg path "$1" --arg kind "$2" --arg database "${3-}" --argjson size "$(<"$work/$key.size")" \
    --arg sha256 "$(<"$work/$key.sha256")" \
    '{path: $path, kind: $kind, database: (if $kind == "database" then $database else null end),
      size_bytes: $size, sha256: $sha256}' >>"$work/files.jsonl" || die "recording $1 in the manifest failed"
  log "uploaded $1 ($(<"$work/$key.size") bytes, sha256 $(<"$work/$key.sha256"))"
}

# --- row counts in the dump's snapshot ---------------------------------------------------------
# Each database is dumped in a snapshot a holder session exports; a second session counts every
# table's rows exactly in that same snapshot while pg_dump runs, so a restore can be checked
# against the counts. Counted: ordinary tables and partitions outside the system schemas, except
# an extension's own tables (CREATE EXTENSION makes them, the dump holds at most some of their
# rows); partitioned parents (their rows are their partitions'), views, materialized views
# (derived, refreshed on restore), foreign and temporary tables are not. A key is
# schema.table, each part double-quoted unless a bare lower-case identifier (records/manifest.py
# table_key: the same rule).
open_snapshot() { # $1 database: sets SNAPSHOT_ID, the holder session stays open until close_snapshot
  coproc SNAPSHOT_HOLDER { psql -w -X -At -q -v ON_ERROR_STOP=1 --dbname="$(dbname_conninfo "$1")"; }
  # Like pg_dump: no server-side timeout may end the holder (or the count) half way.
  printf '%s\n' 'SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;' \
    'BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;' 'SELECT pg_export_snapshot();' >&"${SNAPSHOT_HOLDER[1]}"
  SNAPSHOT_ID=""
  IFS= read -r SNAPSHOT_ID <&"${SNAPSHOT_HOLDER[0]}" || true
  [[ "$SNAPSHOT_ID" =~ ^[0-9A-F]+-[0-9A-F]+-[0-9]+$ ]]
}

close_snapshot() { # the holder may have gone already (bash then unsets SNAPSHOT_HOLDER): nothing to close
  if [[ -n "${SNAPSHOT_HOLDER[1]:-}" ]]; then
    printf 'COMMIT;\n' >&"${SNAPSHOT_HOLDER[1]}" 2>/dev/null || true
    exec {SNAPSHOT_HOLDER[1]}>&-
  fi
  wait "$SNAPSHOT_HOLDER_PID" 2>/dev/null || true
}

count_rows() { # $1 database, $2 snapshot id, $3 output file: one JSON object {key: rows}
  psql -w -X -At -q -v ON_ERROR_STOP=1 -v snapshot="$2" --dbname="$(dbname_conninfo "$1")" <<'SQL' \
    | jq -s 'add // {}' >"$3"
SET statement_timeout = 0;
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
SET TRANSACTION SNAPSHOT :'snapshot';
SELECT format('SELECT json_build_object(%L, count(*)) FROM %I.%I',
         CASE WHEN n.nspname ~ '^[a-z_][a-z0-9_$]*$' THEN n.nspname ELSE '"' || replace(n.nspname, '"', '""') || '"' END
         || '.' ||
         CASE WHEN c.relname ~ '^[a-z_][a-z0-9_$]*$' THEN c.relname ELSE '"' || replace(c.relname, '"', '""') || '"' END,
         n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
   AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY n.nspname, c.relname \gexec
COMMIT;
SQL
}

record_row_counts() { # $1 blob name, $2 the counts file; merged into the file's manifest entry
  jq -c --arg path "$1" '{path: $path, row_counts: .}' "$2" >>"$work/row_counts.jsonl" \
    || die "recording the row counts of $1 failed"
  log "counted $(jq 'length' "$2") table(s) of $1: $(jq '[.[]] | add // 0' "$2") rows"
}

pg_dumpall -w --globals-only | stream_to_blob globals.sql || die "pg_dumpall --globals-only failed"
record_file globals.sql globals ""

# NUL-separated: a database name may hold a newline or any other byte but NUL.
psql -w -X -At -0 -c "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname" \
  >"$work/databases" || die "cannot list the databases of ${SOURCE_INSTANCE}"
mapfile -d '' -t databases <"$work/databases"
[[ ${#databases[@]} -gt 0 ]] || die "no databases to back up"
# Their sizes on disk, in the same order: the estimate the progress lines compare against.
psql -w -X -At -0 -c "SELECT pg_database_size(oid) FROM pg_database WHERE datallowconn AND NOT datistemplate
  ORDER BY datname" >"$work/database-sizes" || die "cannot read the database sizes of ${SOURCE_INSTANCE}"
mapfile -d '' -t sizes <"$work/database-sizes"
log "${#databases[@]} database(s) to dump, $(mib "$(IFS=+; echo $((${sizes[*]:-0})))") on disk in all"
index=0
for database in "${databases[@]}"; do
  index=$((index + 1))
  name=$(printf 'databases/%03d.dump' "$index")
  log "dumping database $(shown "$database") into $name ($(mib "${sizes[index - 1]:-0}") on disk)"
  open_snapshot "$database" || die "cannot export a snapshot of database $(shown "$database")"
  count_rows "$database" "$SNAPSHOT_ID" "$work/counts.json" &
  counting=$!
  pg_dump -w -Fc ${DUMP_COMPRESSION:+-Z "$DUMP_COMPRESSION"} --snapshot="$SNAPSHOT_ID" --dbname="$(dbname_conninfo "$database")" \
    | stream_to_blob "$name" "$name (database $(shown "$database"))" "${sizes[index - 1]:-}" \
    || die "pg_dump of database $(shown "$database") failed"
  wait "$counting" || die "counting the rows of database $(shown "$database") failed"
  close_snapshot
  record_file "$name" database "$database"
  record_row_counts "$name" "$work/counts.json"
done

finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg image_name "$IMAGE_NAME" --arg source_instance "$SOURCE_INSTANCE" \
  --arg source_namespace "$SOURCE_NAMESPACE" --arg postgres_version "$postgres_version" \
  --argjson server_version_num "$server_version_num" --arg started_at "$started_at" --arg finished_at "$finished_at" \
  --arg pg_dump "$(pg_dump --version)" --arg azcopy "$(azcopy --version 2>/dev/null | head -1)" \
  --slurpfile files "$work/files.jsonl" --slurpfile counts "$work/row_counts.jsonl" \
  '{format_version: 2, image_name: $image_name, source_instance: $source_instance,
    source_namespace: $source_namespace, postgres_version: $postgres_version,
    server_version_num: $server_version_num, dump_format: "custom", started_at: $started_at,
    finished_at: $finished_at, tools: {pg_dump: $pg_dump, azcopy: $azcopy},
    files: [$files[] | . as $f | . + {row_counts: (first($counts[] | select(.path == $f.path) | .row_counts) // null)}]}' \
  >"$work/manifest.json" || die "writing manifest.json failed"
# azcopy insists on a pipe (a redirected file is refused)
cat "$work/manifest.json" | upload_stdin manifest.json || die "manifest upload failed"
log "backup complete: ${#databases[@]} database(s), manifest sha256 $(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
