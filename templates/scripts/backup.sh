#!/usr/bin/env bash
# Backup job: the instance's roles (pg_dumpall --globals-only) and one pg_dump -Fc per database,
# each streamed through sha256 straight into blob storage (no staging file), then manifest.json.
#
# Env: PGHOST PGPORT PGUSER (source superuser) BLOB_URL (image folder, no credentials)
#      IMAGE_NAME SOURCE_INSTANCE SOURCE_NAMESPACE, optional DUMP_COMPRESSION (0-9)
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

files_json=()
record_file() { # $1 blob name, $2 kind, $3 database or empty
  local key=${1//\//_} db='null'
  [[ -n "$3" ]] && db=$(json_string "$3")
  files_json+=("{\"path\": $(json_string "$1"), \"kind\": \"$2\", \"database\": $db, \"size_bytes\": $(<"$work/$key.size"), \"sha256\": \"$(<"$work/$key.sha256")\"}")
  log "uploaded $1 ($(<"$work/$key.size") bytes, sha256 $(<"$work/$key.sha256"))"
}

pg_dumpall -w --globals-only | stream_to_blob globals.sql || die "pg_dumpall --globals-only failed"
record_file globals.sql globals ""

mapfile -t databases < <(psql -w -X -Atqc "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")
[[ ${#databases[@]} -gt 0 ]] || die "no databases to back up"
index=0
for database in "${databases[@]}"; do
  index=$((index + 1))
  name=$(printf 'databases/%03d.dump' "$index")
  log "dumping database ${database}"
  pg_dump -w -Fc ${DUMP_COMPRESSION:+-Z "$DUMP_COMPRESSION"} --dbname="$database" | stream_to_blob "$name" \
    || die "pg_dump of database ${database} failed"
  record_file "$name" database "$database"
done

finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
{
  printf '{\n  "format_version": 1,\n'
  printf '  "image_name": %s,\n' "$(json_string "$IMAGE_NAME")"
  printf '  "source_instance": %s,\n' "$(json_string "$SOURCE_INSTANCE")"
  printf '  "source_namespace": %s,\n' "$(json_string "$SOURCE_NAMESPACE")"
  printf '  "postgres_version": "%s",\n  "server_version_num": %s,\n' "$postgres_version" "$server_version_num"
  printf '  "dump_format": "custom",\n  "started_at": "%s",\n  "finished_at": "%s",\n' "$started_at" "$finished_at"
  printf '  "tools": {"pg_dump": %s, "azcopy": %s},\n' "$(json_string "$(pg_dump --version)")" "$(json_string "$(azcopy --version 2>/dev/null | head -1)")"
  printf '  "files": [\n    %s\n  ]\n}\n' "$(IFS=$'\n'; echo "${files_json[*]}" | sed '$!s/$/,/' | sed '2,$s/^/    /')"
} >"$work/manifest.json"
# azcopy insists on a pipe (a redirected file is refused)
cat "$work/manifest.json" | upload_stdin manifest.json || die "manifest upload failed"
log "backup complete: ${#databases[@]} database(s), manifest sha256 $(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
