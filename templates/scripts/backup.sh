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
trap 'rm -rf "$work"' EXIT

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
server_version_num=$(psql -w -X -Atqc 'SHOW server_version_num') || die "cannot connect to ${SOURCE_INSTANCE} at ${PGHOST}:${PGPORT}"
postgres_version=$((server_version_num / 10000))
log "source ${SOURCE_NAMESPACE}/${SOURCE_INSTANCE} runs PostgreSQL ${postgres_version} (${server_version_num})"

# stream_to_blob NAME: stdin -> sha256 + byte count + azcopy; writes $work/NAME.{sha256,size}
stream_to_blob() {
  local name=$1 key=${1//\//_}
  mkfifo "$work/$key.hash-pipe" "$work/$key.size-pipe"
  sha256sum <"$work/$key.hash-pipe" | cut -d' ' -f1 >"$work/$key.sha256" &
  local hash_pid=$!
  wc -c <"$work/$key.size-pipe" | tr -d ' ' >"$work/$key.size" &
  local size_pid=$!
  local status=0
  tee "$work/$key.hash-pipe" "$work/$key.size-pipe" | upload_stdin "$name" || status=$?
  wait "$hash_pid" || status=$?
  wait "$size_pid" || status=$?
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

pg_dumpall -w --globals-only | stream_to_blob globals.sql || die "pg_dumpall --globals-only failed"
record_file globals.sql globals ""

# NUL-separated: a database name may hold a newline or any other byte but NUL.
psql -w -X -At -0 -c "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname" \
  >"$work/databases" || die "cannot list the databases of ${SOURCE_INSTANCE}"
mapfile -d '' -t databases <"$work/databases"
[[ ${#databases[@]} -gt 0 ]] || die "no databases to back up"
index=0
for database in "${databases[@]}"; do
  index=$((index + 1))
  name=$(printf 'databases/%03d.dump' "$index")
  log "dumping database $(shown "$database")"
  pg_dump -w -Fc ${DUMP_COMPRESSION:+-Z "$DUMP_COMPRESSION"} --dbname="$(dbname_conninfo "$database")" \
    | stream_to_blob "$name" || die "pg_dump of database $(shown "$database") failed"
  record_file "$name" database "$database"
done

finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg image_name "$IMAGE_NAME" --arg source_instance "$SOURCE_INSTANCE" \
  --arg source_namespace "$SOURCE_NAMESPACE" --arg postgres_version "$postgres_version" \
  --argjson server_version_num "$server_version_num" --arg started_at "$started_at" --arg finished_at "$finished_at" \
  --arg pg_dump "$(pg_dump --version)" --arg azcopy "$(azcopy --version 2>/dev/null | head -1)" \
  --slurpfile files "$work/files.jsonl" \
  '{format_version: 1, image_name: $image_name, source_instance: $source_instance,
    source_namespace: $source_namespace, postgres_version: $postgres_version,
    server_version_num: $server_version_num, dump_format: "custom", started_at: $started_at,
    finished_at: $finished_at, tools: {pg_dump: $pg_dump, azcopy: $azcopy}, files: $files}' \
  >"$work/manifest.json" || die "writing manifest.json failed"
# azcopy insists on a pipe (a redirected file is refused)
cat "$work/manifest.json" | upload_stdin manifest.json || die "manifest upload failed"
log "backup complete: ${#databases[@]} database(s), manifest sha256 $(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
