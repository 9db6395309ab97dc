#!/usr/bin/env bash
# Backup job: the instance's roles (pg_dumpall --globals-only) and one pg_dump -Fc per database,
# each streamed through sha256 straight into blob storage (no staging file), then manifest.json.
#
# Env: PGHOST PGPORT PGUSER (source superuser) BLOB_URL (image folder, no credentials)
#      IMAGE_NAME SOURCE_INSTANCE SOURCE_NAMESPACE, optional DUMP_COMPRESSION (pg_dump -Z: 0-9, or
#      from PostgreSQL 16 METHOD[:LEVEL] with METHOD gzip, lz4, zstd or none), CHECK_CHUNK_BYTES,
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

# stream_to_blob NAME [LABEL ON_DISK_BYTES]: stdin -> sha256 + byte count + range hashes (+ the
# archive parser, for a dump) + azcopy; writes $work/NAME.{sha256,size,chunks}; logs its progress
# every PROGRESS_SECONDS and when done.
stream_to_blob() {
  local name=$1 key=${1//\//_} label=${2:-$1} on_disk=${3:-} started=$SECONDS
  mkfifo "$work/$key.hash-pipe" "$work/$key.size-pipe" "$work/$key.chunk-pipe"
  sha256sum <"$work/$key.hash-pipe" | cut -d' ' -f1 >"$work/$key.sha256" &
  local hash_pid=$!
  # dd counts the bytes exactly and reports them as it goes (status=progress), for the progress lines
  LC_ALL=C dd bs=1M of=/dev/null status=progress <"$work/$key.size-pipe" 2>"$work/$key.count" &
  local size_pid=$!
  hash_chunks <"$work/$key.chunk-pipe" >"$work/$key.chunks" &
  local chunks_pid=$! parse_pid="" parse_pipe=()
  if [[ "$name" == *.dump ]]; then
    mkfifo "$work/$key.parse-pipe"
    parse_pipe=("$work/$key.parse-pipe")
    parse_archive "$work/$key.parse-errors" <"$work/$key.parse-pipe" &
    parse_pid=$!
  fi
  start_progress dump_progress "$label" "$work/$key.count" "$started" "$on_disk"
  local status=0
  tee "$work/$key.hash-pipe" "$work/$key.size-pipe" "$work/$key.chunk-pipe" "${parse_pipe[@]}" \
    | upload_stdin "$name" || status=$?
  wait "$hash_pid" || status=$?
  wait "$size_pid" || status=$?
  wait "$chunks_pid" || status=$?
  if [[ -n "$parse_pid" ]] && ! wait "$parse_pid"; then
    log "ERROR: $name does not parse as an archive (pg_restore read it as it streamed):"
    redact <"$work/$key.parse-errors" | tail -n 5 >&2
    status=1
  fi
  stop_progress
  bytes_counted "$work/$key.count" >"$work/$key.size"
  [[ -s "$work/$key.size" ]] || status=1
  ((status != 0)) || dump_progress "$label done" "$work/$key.count" "$started" "$on_disk"
  return "$status"
}

# The sha256 of each CHECK_CHUNK_BYTES range of stdin, one per line: verification compares a
# sample of ranges read back from blob storage with these, instead of downloading every byte.
CHECK_CHUNK_BYTES=${CHECK_CHUNK_BYTES:-4194304}
hash_chunks() { split -b "$CHECK_CHUNK_BYTES" -a 12 -d --filter='sha256sum | cut -c1-64' - "$work/chunk."; }

# parse_archive ERRORS: pg_restore reads the whole archive on stdin (every entry decompressed, the
# SQL thrown away), then the rest of stdin is drained so the stream never blocks on this branch.
parse_archive() {
  local status=0
  pg_restore --file=/dev/null 2>"$1" || status=$?
  cat >/dev/null
  return "$status"
}

# One JSON object per file, written by jq: any byte a database name may hold is carried exactly.
record_file() { # $1 blob name, $2 kind, $3 database (kind database only)
  local key=${1//\//_}
  jq -n -c --arg path "$1" --arg kind "$2" --arg database "${3-}" --argjson size "$(<"$work/$key.size")" \
    --arg sha256 "$(<"$work/$key.sha256")" --rawfile chunks "$work/$key.chunks" --argjson chunk_bytes "$CHECK_CHUNK_BYTES" \
    '{path: $path, kind: $kind, database: (if $kind == "database" then $database else null end),
      size_bytes: $size, sha256: $sha256,
      stream_check: {chunk_bytes: $chunk_bytes, chunk_sha256: ($chunks | split("\n") | map(select(. != ""))),
                     archive_parsed: ($path | endswith(".dump"))}}' \
    >>"$work/files.jsonl" || die "recording $1 in the manifest failed"
  log "uploaded $1 ($(<"$work/$key.size") bytes, sha256 $(<"$work/$key.sha256"))"
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
  pg_dump -w -Fc ${DUMP_COMPRESSION:+-Z "$DUMP_COMPRESSION"} --dbname="$(dbname_conninfo "$database")" \
    | stream_to_blob "$name" "$name (database $(shown "$database"))" "${sizes[index - 1]:-}" \
    || die "pg_dump of database $(shown "$database") failed"
  record_file "$name" database "$database"
done

# What the dumps were compressed with, as METHOD:LEVEL (pg_dump -Fc's own default is gzip at zlib's default)
compression_label() {
  case "$1" in
    "") echo "gzip:default" ;;
    0) echo "none" ;;
    [1-9]) echo "gzip:$1" ;;
    *) echo "$1" ;;
  esac
}

finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg image_name "$IMAGE_NAME" --arg source_instance "$SOURCE_INSTANCE" \
  --arg source_namespace "$SOURCE_NAMESPACE" --arg postgres_version "$postgres_version" \
  --argjson server_version_num "$server_version_num" --arg started_at "$started_at" --arg finished_at "$finished_at" \
  --arg pg_dump "$(pg_dump --version)" --arg azcopy "$(azcopy --version 2>/dev/null | head -1)" \
  --slurpfile files "$work/files.jsonl" --arg compression "$(compression_label "${DUMP_COMPRESSION:-}")" \
  '{format_version: 1, compression: $compression, image_name: $image_name, source_instance: $source_instance,
    source_namespace: $source_namespace, postgres_version: $postgres_version,
    server_version_num: $server_version_num, dump_format: "custom", started_at: $started_at,
    finished_at: $finished_at, tools: {pg_dump: $pg_dump, azcopy: $azcopy}, files: $files}' \
  >"$work/manifest.json" || die "writing manifest.json failed"
# azcopy insists on a pipe (a redirected file is refused)
cat "$work/manifest.json" | upload_stdin manifest.json || die "manifest upload failed"
log "backup complete: ${#databases[@]} database(s), manifest sha256 $(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
