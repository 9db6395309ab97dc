#!/usr/bin/env bash
# Backup job: the instance's roles (pg_dumpall --globals-only) and one pg_dump -Fc per database,
# each streamed through sha256 straight into blob storage (no staging file), then manifest.json.
#
# Environment: records/job_scripts.py BackupEnv (every variable, who supplies it, what it means).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=backup
: "${PGHOST:?}" "${PGPORT:?}" "${PGUSER:?}" "${BLOB_URL:?}" "${IMAGE_NAME:?}" "${SOURCE_INSTANCE:?}" "${SOURCE_NAMESPACE:?}"
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-15}" PGDATABASE=postgres
# The tenant's settings (a search_path naming its schemas ahead of pg_catalog, timeouts...) must
# not decide this job's catalogue queries (common.sh); pg_dump and pg_dumpall set theirs too.
export PGOPTIONS="$TENANT_SESSION_OPTIONS $NAMES_AS_BYTES"
load_secrets

work=$(mktemp -d "${TMPDIR:-/tmp}/toygres-backup.XXXXXX")
trap 'stop_background_steps; rm -rf "$work"' EXIT

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
server_version_num=$(psql -w -X -Atqc 'SHOW server_version_num') || die "cannot connect to ${SOURCE_INSTANCE} at ${PGHOST}:${PGPORT}"
postgres_version=$((server_version_num / 10000))
log "source ${SOURCE_NAMESPACE}/${SOURCE_INSTANCE} runs PostgreSQL ${postgres_version} (${server_version_num})"

# A pg_dump built without the asked method (a PostgreSQL 16 built with zlib only has no zstd or
# lz4) dumps with gzip level 1 instead, and the manifest records what was used.
compression_probe=$(pg_dump -Z "${DUMP_COMPRESSION:-0}" -f /dev/null --dbname="host=/nonexistent" 2>&1 || true)
if [[ -n "${DUMP_COMPRESSION:-}" && "$compression_probe" == *"invalid compression specification"* ]]; then
  log "this pg_dump cannot compress with ${DUMP_COMPRESSION}: using gzip level 1"
  DUMP_COMPRESSION=1
fi
[[ -z "${AGE_RECIPIENT:-}" ]] || log "every file is age-encrypted for recipient ${AGE_RECIPIENT} before it leaves this job"

# dump_progress LABEL DD_REPORT STARTED [ON_DISK_BYTES [PROGRESS]]: one line of how far a stream has
# come; with the archive reader's PROGRESS (the share of the tables' size read), its percent and
# ETA, and all databases' percent (each database weighed by its size on disk: disk_done of disk_all).
dump_progress() {
  local bytes elapsed=$((SECONDS - $3)) fraction="" where
  bytes=$(bytes_counted "$2")
  [[ -z "${5:-}" || ! -s "$5" ]] || fraction=$(jq -r '.fraction' "$5" 2>/dev/null) || fraction=""
  where=$(percent_read "$fraction" "$elapsed" "${4:-}")
  log "$1: $(mib "${bytes:-0}") dumped and uploaded in ${elapsed}s ($(rate "${bytes:-0}" "$elapsed"))${where:+; $where}"
}

# percent_read FRACTION ELAPSED [ON_DISK_BYTES]: "42% of its tables read, about 0m55s left (all
# databases: 30%)" from the share of the database's tables read; without one, its size on disk.
percent_read() {
  if [[ "$1" =~ ^[0-9.]+$ ]]; then
    awk -v f="$1" -v s="$2" -v d="${disk_done:-0}" -v n="${3:-0}" -v a="${disk_all:-0}" 'BEGIN {
      line = sprintf("%d%% of its tables read", int(100 * f))
      if (f >= 0.01 && f < 1) { left = int(s * (1 - f) / f + 0.5); line = line sprintf(", about %dm%02ds left", int(left / 60), left % 60) }
      if (a > 0) line = line sprintf(" (all databases: %d%%)", int(100 * (d + f * n) / a))
      print line }'
  else
    echo "${3:+the database takes $(mib "$3") on disk}"
  fi
}

# encrypt_stream: stdin -> stdout. With AGE_RECIPIENT (an age X25519 public key) every file is
# age-encrypted here, before it is hashed, counted and uploaded: what leaves the job, and what the
# manifest's sizes and sha256 describe, is ciphertext. Without it the bytes pass unchanged.
encrypt_stream() {
  if [[ -n "${AGE_RECIPIENT:-}" ]]; then age --encrypt --recipient "$AGE_RECIPIENT"; else cat; fi
}

# The manifest itself stays plaintext (names, sizes, hashes: no data); it says to whom the files are encrypted.
record_encryption() { # $1: manifest.json
  [[ -n "${AGE_RECIPIENT:-}" ]] || return 0
  jq --arg recipient "$AGE_RECIPIENT" --arg age "age $(age --version)" \
    '.encryption = {format: "age", recipient: $recipient} | .tools.age = $age' "$1" >"$1.tmp" && mv "$1.tmp" "$1"
}

# stream_to_blob NAME [LABEL ON_DISK_BYTES [TABLE_SIZES]]: stdin -> sha256 + byte count + range
# hashes (+ the archive reader, for a dump: $work/NAME.counts, and with TABLE_SIZES its percent in
# $work/NAME.progress) + azcopy; writes $work/NAME.{sha256,size,chunks}; logs its progress every
# PROGRESS_SECONDS and when done.
stream_to_blob() {
  local name=$1 key=${1//\//_} label=${2:-$1} on_disk=${3:-} tables=${4:-} started=$SECONDS
  mkfifo "$work/$key.digest-pipe"
  # one process hashes the whole stream and each range and counts its bytes (stream_digest.py)
  python3 "$STREAM_DIGEST" "$CHECK_CHUNK_BYTES" "$work/$key" <"$work/$key.digest-pipe" &
  local digest_pid=$! parse_pid="" parse_pipe=()
  if [[ "$name" == *.dump ]]; then
    mkfifo "$work/$key.parse-pipe"
    parse_pipe=("$work/$key.parse-pipe")
    read_archive "$work/$key.counts" "$work/$key.parse-errors" "$tables" "$work/$key.progress" <"$work/$key.parse-pipe" &
    parse_pid=$!
  fi
  start_progress dump_progress "$label" "$work/$key.count" "$started" "$on_disk" "$work/$key.progress"
  local status=0
  if [[ -n "${AGE_RECIPIENT:-}" ]]; then
    # the reader reads the plaintext; what is hashed, counted and stored is the ciphertext
    tee "${parse_pipe[@]}" | encrypt_stream | tee "$work/$key.digest-pipe" | upload_stdin "$name" "$on_disk" || status=$?
  else
    tee "$work/$key.digest-pipe" "${parse_pipe[@]}" | upload_stdin "$name" "$on_disk" || status=$?
  fi
  wait "$digest_pid" || status=$?
  if [[ -n "$parse_pid" ]] && ! wait "$parse_pid"; then
    log "ERROR: $name does not parse as an archive (the archive reader read it as it streamed):"
    redact <"$work/$key.parse-errors" | tail -n 5 >&2
    status=1
  fi
  stop_progress
  # the digest writes the size last, once the stream has ended and every result is written
  [[ -s "$work/$key.size" ]] || status=1
  ((status != 0)) || dump_progress "$label done" "$work/$key.count" "$started" "$on_disk" "$work/$key.progress"
  return "$status"
}

# The sha256 of each CHECK_CHUNK_BYTES range of the stream (verification compares a sample of ranges
# read back from blob storage with these, instead of downloading every byte), the whole stream's
# sha256 and its length: stream_digest.py, one process per file.
CHECK_CHUNK_BYTES=${CHECK_CHUNK_BYTES:-4194304}
STREAM_DIGEST="$(dirname "${BASH_SOURCE[0]}")/stream_digest.py"

# read_archive COUNTS ERRORS [TABLE_SIZES PROGRESS]: archive_reader.py reads the whole archive on
# stdin once (the TOC, every data block inflated, each table's rows counted from its COPY data: what
# the archive holds, so no second session counts the source) and writes {row_counts, data_bytes,
# data_entries} to COUNTS (and, given TABLE_SIZES, its percent to PROGRESS); the rest of stdin is
# drained whatever happened, so the stream never blocks on this branch.
ARCHIVE_READER="$(dirname "${BASH_SOURCE[0]}")/archive_reader.py"
TABLE_SIZES_SQL="$(dirname "${BASH_SOURCE[0]}")/table_sizes.sql"
# table_sizes DATABASE FILE: the tables' sizes that weigh the percent (table_sizes.sql); without
# them the dump goes on, without a percent
table_sizes() {
  PGOPTIONS="$PGOPTIONS -c statement_timeout=60s" psql -w -X -At -q -v ON_ERROR_STOP=1 --dbname="$(dbname_conninfo "$1")" \
    -f "$TABLE_SIZES_SQL" >"$2" 2>/dev/null || { log "no table sizes for the percent of database $(shown "$1")"; return 1; }
}

read_archive() {
  local status=0 progress=()
  [[ -z "${3:-}" ]] || progress=(--sizes "$3" --progress "$4")
  python3 "$ARCHIVE_READER" custom "${progress[@]}" >"$1" 2>"$2" || status=$?
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

# --- parallel mode (PARALLEL_JOBS > 1) ---------------------------------------------------------
# pg_dump -Fd -j N cannot write to a pipe: each database is dumped into a directory on the job's
# scratch disk (one file per table); each file is uploaded once pg_dump has finished it, and every
# file is hashed and recorded in the manifest with the archive (directory) it belongs to.
PARALLEL_JOBS=${PARALLEL_JOBS:-1}
[[ "$PARALLEL_JOBS" =~ ^[1-9][0-9]*$ ]] || die "PARALLEL_JOBS must be a positive integer, not $(shown "$PARALLEL_JOBS")"

# directory_progress LABEL DIRECTORY STARTED [ON_DISK_BYTES [TABLE_SIZES VERBOSE_LOG]]: how much
# pg_dump -Fd has written and, with the tables' sizes, the share of them whose data it finished
directory_progress() {
  local bytes elapsed=$((SECONDS - $3)) fraction="" where
  bytes=$(du -sb "$2" 2>/dev/null | cut -f1 || true)
  [[ -z "${5:-}" || ! -s "$5" ]] || fraction=$(tables_finished "$5" "$6" 2>/dev/null) || fraction=""
  where=$(percent_read "$fraction" "$elapsed" "${4:-}")
  log "$1: $(mib "${bytes:-0}") dumped in ${elapsed}s ($(rate "${bytes:-0}" "$elapsed"))${where:+; $where}"
}

# finished_table_data VERBOSE_LOG: "ID<tab>NAME" of each table whose data pg_dump -j reported
# finished. pg_dump writes "pg_dump:", " " and the message as three writes, from the leader and each
# worker into one file: another process's prefix fragments may precede a message on its line.
finished_table_data() {
  sed -n -E 's/^(pg_dump:| )*finished item ([0-9]+) TABLE DATA (.*)$/\2\t\3/p' "$1" 2>/dev/null
}

# tables_finished TABLE_SIZES VERBOSE_LOG: the share of the tables' sizes whose data pg_dump -j
# reported finished (by the name alone, so a name in two schemas counts the first of its sizes for
# each finished item)
tables_finished() {
  finished_table_data "$2" | cut -f2- | jq -R -s -r --slurpfile sizes "$1" '
    ($sizes[0] | map(.[2]) | add // 0) as $total
    | ($sizes[0] | group_by(.[1]) | map({key: .[0][1], value: map(.[2])}) | from_entries) as $by
    | if $total > 0 then
        [split("\n") | map(select(. != "")) | group_by(.)[] | . as $done | ($by[$done[0]] // [])[:($done | length)] | add // 0]
        | add // 0 | . / $total | if . > 1 then 1 else . end
      else empty end'
}

# upload_as_dumped ARCHIVE VERBOSE_LOG DUMP_PID: each table's data file is uploaded as soon as
# pg_dump reports it finished (uploads overlap the dump), every other file (toc.dat, large objects)
# once pg_dump has exited; PARALLEL_JOBS uploads at a time, one azcopy PipeBlob per file (a
# directory upload costs azcopy seconds of job bookkeeping).
upload_as_dumped() {
  local archive=$1 report=$2 dump=$3 dir="$work/dirs/$1" running=0 status=0 dumping=1 name path
  local -A sent=()
  local -a ready
  while ((dumping)); do
    kill -0 "$dump" 2>/dev/null || dumping=0 # checked first: the last scan sees every file
    if ((dumping)); then
      finished_table_data "$report" | cut -f1 | sed 's/$/.dat/' >"$report.ready" || true
    else
      (cd "$dir" && find . -type f -printf '%P\n') >"$report.ready"
    fi
    mapfile -t ready <"$report.ready"
    for name in "${ready[@]}"; do
      for path in "$dir/$name" "$dir/$name".*; do
        name=${path##*/}
        [[ -f "$path" && -z "${sent[$name]:-}" ]] || continue
        sent[$name]=1
        if ((running >= PARALLEL_JOBS)); then
          wait -n || status=1
          running=$((running - 1))
        fi
        { store_file "$archive" "$name"; } &
        running=$((running + 1))
      done
    done
    ((dumping == 0)) || sleep 0.2
  done
  for (( ; running > 0; running--)); do wait -n || status=1; done
  return "$status"
}

# store_file ARCHIVE NAME: one file of a directory dump as it is stored (encrypt_stream: ciphertext
# when the deployment has a recipient) kept in $work/dirs/ARCHIVE.stored, then uploaded from there.
store_file() {
  local stored="$work/dirs/$1.stored/$2"
  if [[ -n "${AGE_RECIPIENT:-}" ]]; then
    encrypt_stream <"$work/dirs/$1/$2" >"$stored" || return 1
  else
    ln "$work/dirs/$1/$2" "$stored" || return 1
  fi
  # azcopy insists on a pipe (a redirected file is refused)
  cat "$stored" | upload_stdin "$1/$2" "$(file_size "$stored")"
}

# record_directory ARCHIVE DATABASE: each stored file of the archive (once every upload is done)
# with the size and sha256 of the bytes stored
record_directory() {
  local archive=$1 path size sha256
  while IFS= read -r -d '' path; do
    size=$(file_size "$work/dirs/$archive.stored/$path")
    sha256=$(sha256sum "$work/dirs/$archive.stored/$path" | cut -d' ' -f1)
    jq -n -c --arg path "$archive/$path" --arg archive "$archive" --arg database "$2" --argjson size "$size" \
      --arg sha256 "$sha256" \
      '{path: $path, kind: "database", database: $database, size_bytes: $size, sha256: $sha256,
        dump_format: "directory", archive: $archive}' >>"$work/files.jsonl" || return 1
  done < <(cd "$work/dirs/$archive.stored" && find . -type f -printf '%P\0' | LC_ALL=C sort -z)
}

# dump_directory_to_blob ARCHIVE DATABASE [ON_DISK_BYTES]: pg_dump -Fd -j PARALLEL_JOBS into
# $work/dirs/ARCHIVE, uploaded to ARCHIVE/ and recorded file by file, its rows counted from the
# archive into $work/dirs/ARCHIVE.counts; the local copy is then removed.
dump_directory_to_blob() {
  local archive=$1 database=$2 on_disk=${3:-} started=$SECONDS dump upload count missing
  local label="$archive (database $(shown "$database"))"
  mkdir -p "$work/dirs/$archive.stored"
  log "dumping database $(shown "$database") into $archive/ with pg_dump -Fd -j ${PARALLEL_JOBS} ($(mib "${on_disk:-0}") on disk)"
  table_sizes "$database" "$work/dirs/$archive.tables" || : >"$work/dirs/$archive.tables"
  start_progress directory_progress "$label" "$work/dirs/$archive" "$started" "$on_disk" "$work/dirs/$archive.tables" "$work/dirs/$archive.log"
  PGOPTIONS="$TENANT_SESSION_OPTIONS" pg_dump -w -Fd -j "$PARALLEL_JOBS" --verbose ${DUMP_COMPRESSION:+-Z "$DUMP_COMPRESSION"} \
    --dbname="$(dbname_conninfo "$database")" -f "$work/dirs/$archive" 2>"$work/dirs/$archive.log" &
  dump=$!
  upload_as_dumped "$archive" "$work/dirs/$archive.log" "$dump" &
  upload=$!
  if ! wait "$dump"; then
    grep -iE 'error|fatal|warning' "$work/dirs/$archive.log" | tail -n 20 >&2 || true
    # uploads in flight finish first: no blob of this image may land after the failure's cleanup
    wait "$upload" || true
    die "pg_dump of database $(shown "$database") failed"
  fi
  stop_progress
  # Verification cannot read an encrypted toc.dat (it holds no key): the archive is listed here,
  # and every table's data file it names must be there (verification's check of a plaintext one)
  if ! pg_restore --list "$work/dirs/$archive" >"$work/dirs/$archive.list" 2>"$work/dirs/$archive.parse-errors"; then
    wait "$upload" || true
    log "ERROR: $archive does not parse as an archive (pg_restore --list of its toc.dat):"
    redact <"$work/dirs/$archive.parse-errors" | tail -n 5 >&2
    die "pg_dump of database $(shown "$database") wrote an unreadable archive"
  fi
  missing=$(awk '/^[0-9]+; [0-9]+ [0-9]+ TABLE DATA / {print $1 + 0}' "$work/dirs/$archive.list" | while read -r id; do
    ls "$work/dirs/$archive/$id".dat* >/dev/null 2>&1 || printf '%s ' "$id"
  done)
  if [[ -n "$missing" ]]; then
    wait "$upload" || true
    die "$archive (database $(shown "$database")): its TOC names data files the dump lacks: ${missing% }"
  fi
  # every data file inflated and each table's rows counted (the plaintext, before encryption)
  if ! python3 "$ARCHIVE_READER" directory "$work/dirs/$archive" >"$work/dirs/$archive.counts" 2>"$work/dirs/$archive.parse-errors"; then
    wait "$upload" || true
    log "ERROR: $archive does not parse as an archive (the archive reader read every file):"
    redact <"$work/dirs/$archive.parse-errors" | tail -n 5 >&2
    die "pg_dump of database $(shown "$database") wrote an unreadable archive"
  fi
  directory_progress "$label dumped" "$work/dirs/$archive" "$started" "$on_disk" "$work/dirs/$archive.tables" "$work/dirs/$archive.log"
  wait "$upload" || die "upload of $archive (database $(shown "$database")) failed"
  record_directory "$archive" "$database" || die "recording $archive in the manifest failed"
  count=$(find "$work/dirs/$archive" -type f | wc -l)
  log "uploaded $archive/ ($count files, $(du -sb "$work/dirs/$archive" | cut -f1) bytes, each file's sha256 recorded) in $((SECONDS - started))s"
  rm -rf "${work:?}/dirs/$archive" "${work:?}/dirs/$archive.stored"
}

# --- row counts from the archive itself --------------------------------------------------------
# The archive reader counts each table's rows in the dump's own COPY data (archive_reader.py says
# which tables: every TABLE DATA entry whose table the archive creates, an extension's configuration
# table aside; each table's own rows, as count(*) FROM ONLY): the counts are what the archive holds,
# whatever happens to the source after pg_dump read it, and the source is read once. A key is
# schema.table, each part double-quoted unless a bare lower-case identifier (records/manifest.py
# table_key: the same rule).
record_row_counts() { # $1 blob name, $2 the reader's output; its counts merged into the file's manifest entry
  jq -c --arg path "$1" '{path: $path, row_counts: .row_counts}' "$2" >>"$work/row_counts.jsonl" \
    || die "recording the row counts of $1 failed"
  log "counted $(jq '.row_counts | length' "$2") table(s) of $1 in its archive: $(jq '[.row_counts[]] | add // 0' "$2") rows, $(mib "$(jq '.data_bytes' "$2")") of table data"
}

PGOPTIONS="$TENANT_SESSION_OPTIONS" pg_dumpall -w --globals-only | stream_to_blob globals.sql || die "pg_dumpall --globals-only failed"
record_file globals.sql globals ""

# The tenant's databases: every one but PostgreSQL's own template0 and template1 (a database the
# tenant made a template is still its data, as pg_dumpall has it; one with datconnlimit -2 is a DROP
# DATABASE interrupted). One the tenant closed to connections cannot be dumped: the backup fails
# naming it rather than becoming a `ready` image without it.
TENANT_DATABASES="datname NOT IN ('template0', 'template1') AND datconnlimit <> -2"
closed=$(psql -w -X -Atc "SELECT left(string_agg(regexp_replace(datname, '[^a-zA-Z0-9_.-]', '?', 'g'), ', '
  ORDER BY datname), 300) FROM pg_database WHERE NOT datallowconn AND $TENANT_DATABASES") \
  || die "cannot list the databases of ${SOURCE_INSTANCE}"
[[ -z "$closed" ]] || die "database(s) ${closed} of ${SOURCE_INSTANCE} allow no connections (ALTER DATABASE ... ALLOW_CONNECTIONS false): they cannot be dumped, so no image is made without them"
# NUL-separated: a database name may hold a newline or any other byte but NUL.
psql -w -X -At -0 -c "SELECT datname FROM pg_database WHERE datallowconn AND $TENANT_DATABASES ORDER BY datname" \
  >"$work/databases" || die "cannot list the databases of ${SOURCE_INSTANCE}"
mapfile -d '' -t databases <"$work/databases"
[[ ${#databases[@]} -gt 0 ]] || die "no databases to back up"
# Their sizes on disk, in the same order: the estimate the progress lines compare against.
psql -w -X -At -0 -c "SELECT pg_database_size(oid) FROM pg_database WHERE datallowconn AND $TENANT_DATABASES
  ORDER BY datname" >"$work/database-sizes" || die "cannot read the database sizes of ${SOURCE_INSTANCE}"
mapfile -d '' -t sizes <"$work/database-sizes"
log "${#databases[@]} database(s) to dump, $(mib "$(IFS=+; echo $((${sizes[*]:-0})))") on disk in all"
# A single-stream backup's grant names each dump ahead (resources/blob_sas.py): refuse, before any
# dump, an instance with more databases than it names.
blob_url "$(printf 'databases/%03d.dump' "${#databases[@]}")" >/dev/null \
  || die "${SOURCE_INSTANCE} has ${#databases[@]} databases, more than this job's blob grant names dumps for: back it up in parallel mode (parallel_jobs 2 or more)"
index=0 disk_done=0 disk_all=$(IFS=+; echo $((${sizes[*]:-0})))
for database in "${databases[@]}"; do
  index=$((index + 1))
  if ((PARALLEL_JOBS > 1)); then
    archive=$(printf 'databases/%03d' "$index")
    dump_directory_to_blob "$archive" "$database" "${sizes[index - 1]:-}"
    # a directory archive's counts sit on its table of contents
    record_row_counts "$archive/toc.dat" "$work/dirs/$archive.counts"
  else
    name=$(printf 'databases/%03d.dump' "$index") tables="$work/${name//\//_}.tables"
    log "dumping database $(shown "$database") into $name ($(mib "${sizes[index - 1]:-0}") on disk)"
    table_sizes "$database" "$tables" || tables=""
    PGOPTIONS="$TENANT_SESSION_OPTIONS" pg_dump -w -Fc ${DUMP_COMPRESSION:+-Z "$DUMP_COMPRESSION"} --dbname="$(dbname_conninfo "$database")" \
      | stream_to_blob "$name" "$name (database $(shown "$database"))" "${sizes[index - 1]:-}" "$tables" \
      || die "pg_dump of database $(shown "$database") failed"
    record_file "$name" database "$database"
    record_row_counts "$name" "$work/${name//\//_}.counts"
  fi
  disk_done=$((disk_done + ${sizes[index - 1]:-0}))
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
  --slurpfile files "$work/files.jsonl" --argjson parallel_jobs "$PARALLEL_JOBS" \
  --arg compression "$(compression_label "${DUMP_COMPRESSION:-}")" --slurpfile counts "$work/row_counts.jsonl" \
  '{format_version: 3, compression: $compression, image_name: $image_name, source_instance: $source_instance,
    source_namespace: $source_namespace, postgres_version: $postgres_version,
    server_version_num: $server_version_num, dump_format: (if $parallel_jobs > 1 then "directory" else "custom" end),
    parallel_jobs: $parallel_jobs, started_at: $started_at,
    finished_at: $finished_at, tools: {pg_dump: $pg_dump, azcopy: $azcopy},
    files: [$files[] | . as $f | . + {row_counts: (first($counts[] | select(.path == $f.path) | .row_counts) // null)}]}' \
  >"$work/manifest.json" || die "writing manifest.json failed"
record_encryption "$work/manifest.json" || die "recording the encryption in manifest.json failed"
# azcopy insists on a pipe (a redirected file is refused)
cat "$work/manifest.json" | upload_stdin manifest.json || die "manifest upload failed"
log "backup complete: ${#databases[@]} database(s), manifest sha256 $(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
