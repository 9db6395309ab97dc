#!/usr/bin/env bash
# Restore job: download an image and build a data directory on the volume from it (initdb,
# roles, the superuser password from the instance's Secret, pg_restore of each database under its
# exact name from the manifest), and stop cleanly. The steps overlap: files download (and are
# hashed) in the background while initdb runs and earlier databases restore; each file's sha256 is
# checked before anything reads it, and every file's before the job can succeed. A checksum
# mismatch exits 3 and removes the data directory: it can never lead to a running instance.
#
# Env: VOLUME_PATH (the volume; PGDATA becomes $VOLUME_PATH/pgdata) BLOB_URL (image folder)
#      MANIFEST_SHA256 (from the CMS row) optional BACKUP_SHA256SUMS (sha256sum -c lines, from the
#      verified manifest; unset: read from it here) POSTGRES_USER (superuser), PGPASSWORD or POSTGRES_PASSWORD_FILE,
#      optional RESTORE_JOBS (pg_restore -j; a parallel-mode image: its parallel_jobs),
#      TRANSFER_STALL_SECONDS (see common.sh),
#      AGE_IDENTITY_FILE (age private keys, mounted; needed when the manifest says the files are encrypted)
#      RESTORE_DATABASES (a JSON array of database names: restore only those; unset: all)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore
: "${VOLUME_PATH:?}" "${BLOB_URL:?}" "${MANIFEST_SHA256:?}" "${POSTGRES_USER:=postgres}"
load_secrets
: "${PGPASSWORD:?the instance password is required}"

pgdata="$VOLUME_PATH/pgdata"
staging="$VOLUME_PATH/restore-staging"
# Unix socket paths are limited to ~107 bytes, so the private socket lives directly in /tmp.
socket_dir=$(mktemp -d /tmp/toygres-restore.XXXXXX)
cleanup() {
  local status=$?
  stop_background_steps
  if [[ -f "$pgdata/postmaster.pid" ]]; then pg_ctl -D "$pgdata" stop -m fast -w >/dev/null 2>&1 || true; fi
  # A failed restore leaves no half-made data directory behind (the steps overlap, so one may exist)
  if ((status != 0)); then rm -rf "$pgdata"; fi
  rm -rf "$staging" "$socket_dir"
}
trap cleanup EXIT

rm -rf "$staging" "$pgdata"
mkdir -p "$staging/databases"

log "downloading manifest.json"
download_file manifest.json "$staging/manifest.json" || die "download of manifest.json failed"
actual=$(sha256sum "$staging/manifest.json" | cut -d' ' -f1)
[[ "$actual" == "$MANIFEST_SHA256" ]] || die "checksum mismatch: manifest.json has sha256 $actual, the CMS recorded $MANIFEST_SHA256" 3

# An encrypted image: the mounted identities must open it, checked before anything is downloaded.
encrypted_for=$(jq -r '.encryption.recipient // empty' "$staging/manifest.json")
check_identity() {
  [[ -n "$encrypted_for" ]] || return 0
  [[ -n "${AGE_IDENTITY_FILE:-}" && -r "${AGE_IDENTITY_FILE:-}" ]] \
    || die "the image is age-encrypted for recipient $encrypted_for and no identity file is mounted (AGE_IDENTITY_FILE)"
  local held # captured first: `age-keygen | grep -q` could fail on SIGPIPE under pipefail
  held=$(age-keygen -y "$AGE_IDENTITY_FILE" 2>/dev/null) || die "the mounted identity file is not an age identity file"
  grep -qxF "$encrypted_for" <<<"$held" \
    || die "the mounted identity file holds no identity for recipient $encrypted_for: the image cannot be decrypted"
  log "the image is age-encrypted for recipient $encrypted_for; the mounted identity file holds its key"
}
check_identity

# decrypt_file NAME: a verified ciphertext replaced by its plaintext (age authenticates every chunk).
decrypt_file() {
  [[ -n "$encrypted_for" ]] || return 0
  log "decrypting $1"
  interruptible age --decrypt -i "$AGE_IDENTITY_FILE" --output "$staging/$1.plain" "$staging/$1" \
    || die "decrypting $1 failed"
  mv "$staging/$1.plain" "$staging/$1"
}

# download_progress NAME FILE TOTAL_BYTES STARTED: one line of how far a download has come
download_progress() {
  local bytes elapsed=$((SECONDS - $4))
  bytes=$(file_size "$2")
  log "$1: $(mib "${bytes:-0}") of $(mib "$3") downloaded ($(percent "${bytes:-0}" "$3")) in ${elapsed}s ($(rate "${bytes:-0}" "$elapsed"))"
}

# restore_progress LABEL VERBOSE_LOG ITEMS STARTED: archive items pg_restore has done so far
restore_progress() {
  local done elapsed=$((SECONDS - $4))
  done=$(grep -cE '^pg_restore: (creating|processing data for|executing) ' "$2" 2>/dev/null || true)
  # --create's DATABASE entry is logged but not listed: never show more than the archive holds
  ((${done:-0} <= $3)) || done=$3
  log "$1: ${done:-0} of $3 archive items restored in ${elapsed}s"
}

# Without BACKUP_SHA256SUMS (too long for one environment variable: a parallel image of thousands of
# tables) the same list comes from the verified manifest: the roles and the chosen databases.
if [[ -z "${BACKUP_SHA256SUMS:-}" ]]; then
  BACKUP_SHA256SUMS=$(jq -r --argjson wanted "${RESTORE_DATABASES:-null}" '.files[]
    | select(.kind != "database" or $wanted == null or (.database as $name | any($wanted[]; . == $name)))
    | "\(.sha256)  \(.path)"' "$staging/manifest.json") || die "manifest.json lists no files"
fi
mapfile -t files < <(printf '%s\n' "$BACKUP_SHA256SUMS" | awk 'NF {print $2}')
mkdir -p "$socket_dir/hashed"

# download_all: every file in turn, each hashed as soon as it is down; $socket_dir/hashed/N holds
# the sha256 of the Nth file once it is complete. Runs in the background while the rest goes on.
download_all() {
  local index=0 name total started
  # Stopped by the job's cleanup: stop this step's own azcopy and progress reporter too
  trap 'stop_background_steps; exit 143' TERM
  for name in "${files[@]}"; do
    total=$(jq -r --arg path "$name" '.files[] | select(.path == $path) | .size_bytes' "$staging/manifest.json")
    log "downloading $name ($(mib "$total"))"
    started=$SECONDS
    mkdir -p "$(dirname "$staging/$name")" # a directory-format dump (parallel mode) is a folder of files
    start_progress download_progress "$name" "$staging/$name" "$total" "$started"
    download_file "$name" "$staging/$name" || die "download of $name failed"
    stop_progress
    download_progress "$name done" "$staging/$name" "$total" "$started"
    sha256sum <"$staging/$name" | cut -d' ' -f1 >"$socket_dir/hashed/$index.tmp"
    mv "$socket_dir/hashed/$index.tmp" "$socket_dir/hashed/$index"
    index=$((index + 1))
  done
}
download_all &
downloader=$!

# verified NAME: wait until NAME is downloaded, then exit 3 unless its sha256 is the manifest's.
verified() {
  local index="" i expected actual
  for i in "${!files[@]}"; do if [[ "${files[i]}" == "$1" ]]; then index=$i && break; fi; done
  [[ -n "$index" ]] || die "manifest entry $(shown "$1") is not among the verified files"
  while [[ ! -e "$socket_dir/hashed/$index" ]]; do
    kill -0 "$downloader" 2>/dev/null || [[ -e "$socket_dir/hashed/$index" ]] || { wait "$downloader" || true; die "download of $1 failed"; }
    sleep 0.1
  done
  expected=$(printf '%s\n' "$BACKUP_SHA256SUMS" | awk -v name="$1" 'NF && $2 == name {print $1; exit}')
  actual=$(<"$socket_dir/hashed/$index")
  [[ "$actual" == "$expected" ]] || die "checksum mismatch: $1 has sha256 $actual, the manifest says $expected" 3
}

# ready_to_read NAME: NAME (a file, or a directory-format dump's archive folder: each of its files)
# verified and, for an encrypted image, decrypted.
ready_to_read() {
  local member
  if jq -e --arg archive "$1" 'any(.files[]; .archive == $archive)' "$staging/manifest.json" >/dev/null; then
    for member in "${files[@]}"; do
      if [[ "$member" == "$1/"* ]]; then
        verified "$member"
        decrypt_file "$member"
      fi
    done
  else
    verified "$1"
    decrypt_file "$1"
  fi
}

log "initdb in $pgdata (while the files download)"
# initdb reads one line of its password file: it gets a throwaway password, and the real one
# (which may hold any character, line breaks too) is set by ALTER ROLE once the roles are in.
pwfile="$socket_dir/pw"
head -c 24 /dev/urandom | base64 >"$pwfile"
interruptible initdb -D "$pgdata" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=scram-sha-256 \
  --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null || die "initdb failed"
rm -f "$pwfile"

# The temporary server listens on a private socket only, trusting nobody but that socket.
# Its commits need not wait for the WAL flush: the clean stop's checkpoint makes everything durable,
# and a restore that does not end cleanly removes the data directory anyway.
printf 'local all all trust\n' >"$socket_dir/pg_hba.conf"
pg_ctl -D "$pgdata" -w -t 120 -l "$socket_dir/postgres.log" start \
  -o "-c listen_addresses='' -c unix_socket_directories=$socket_dir -c hba_file=$socket_dir/pg_hba.conf \
  -c synchronous_commit=off" >/dev/null \
  || { cat "$socket_dir/postgres.log" >&2; die "temporary server did not start"; }
export PGHOST="$socket_dir" PGUSER="$POSTGRES_USER" PGDATABASE=postgres

# globals_for_psql FILE: globals.sql as this psql can run it. pg_dumpall since 17.6/16.10/15.14
# wraps its script in \restrict KEY ... \unrestrict KEY; a psql of an older minor (an upgrade
# target can be one) knows neither command, and only for such a psql are the two lines dropped.
globals_for_psql() {
  if printf '\\restrict probe\n\\unrestrict probe\n' | psql -X -q -v ON_ERROR_STOP=1 >/dev/null 2>&1; then
    cat "$1"
  else
    grep -v -E '^\\(un)?restrict [[:alnum:]]+$' "$1"
  fi
}

ready_to_read globals.sql
log "restoring roles"
globals_for_psql "$staging/globals.sql" | grep -v -E "^CREATE ROLE \"?${POSTGRES_USER}\"?;$" \
  | psql -X -q -v ON_ERROR_STOP=1 >/dev/null || die "restoring roles failed"

# The instance's Secret is what clients will use: the superuser's password is set from it, as a
# literal on stdin (never on a command line), whatever globals.sql said.
printf 'ALTER ROLE "%s" PASSWORD '"'"'%s'"'"';\n' "${POSTGRES_USER//\"/\"\"}" "${PGPASSWORD//\'/\'\'}" \
  | psql -X -q -v ON_ERROR_STOP=1 >/dev/null || die "setting the password of ${POSTGRES_USER} failed"

restore_failed() { # $1: pg_restore's verbose log, $2: the database; its errors (not its progress) go to the log
  grep -vE '^pg_restore: (creating|processing data for|executing|launching item|finished item|connecting) ' "$1" \
    | tail -n 20 >&2 || true
  die "pg_restore of $(shown "$2") failed"
}

# selected_databases MANIFEST: "path NUL database NUL" of each database to restore: all of them,
# or those RESTORE_DATABASES names (a JSON array, read by jq: any name arrives exactly).
# A directory-format dump (parallel mode) is restored from its archive folder, named once (by its toc.dat).
selected_databases() {
  jq -j --argjson wanted "${RESTORE_DATABASES:-null}" '.files[] | select(.kind == "database")
    | .database as $name | select($wanted == null or any($wanted[]; . == $name))
    | select(.archive == null or .path == .archive + "/toc.dat")
    | (.archive // .path), "\u0000", .database, "\u0000"' "$1"
}

# Names come from the verified manifest, NUL-separated: each database keeps its exact name.
selected_databases "$staging/manifest.json" >"$socket_dir/databases" || die "manifest.json lists no readable databases"
mapfile -d '' -t entries <"$socket_dir/databases"
if [[ -n "${RESTORE_DATABASES:-}" ]]; then
  wanted=$(jq -r 'length' <<<"$RESTORE_DATABASES") || die "RESTORE_DATABASES is not a JSON array of names"
  ((${#entries[@]} == 2 * wanted)) || die "the image holds $((${#entries[@]} / 2)) of the ${wanted} database(s) asked for"
  log "restoring ${wanted} of the image's databases (selected); roles are restored whole"
fi
for ((i = 0; i < ${#entries[@]}; i += 2)); do
  name=${entries[i]} database=${entries[i + 1]}
  [[ -n "$database" ]] || die "manifest entry $(shown "$name") names no database"
  ready_to_read "$name"
  exists=$(psql -X -Atq -v db="$database" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")
  items=$(pg_restore --list "$staging/$name" | grep -c '^[0-9]' || true)
  report="$socket_dir/pg_restore.log" label="pg_restore of database $(shown "$database")" started=$SECONDS
  start_progress restore_progress "$label" "$report" "$items" "$started"
  if [[ "$exists" == 1 ]]; then
    log "restoring database $(shown "$database") into the existing one (${items} archive items)"
    interruptible pg_restore --verbose --exit-on-error --jobs="${RESTORE_JOBS:-2}" \
      --dbname="$(dbname_conninfo "$database")" "$staging/$name" 2>"$report" || restore_failed "$report" "$database"
  else
    log "restoring database $(shown "$database") (${items} archive items)"
    # --create takes the name from the archive (quoted as an identifier) and reconnects by it
    # as a plain name, never parsed as a connection string.
    interruptible pg_restore --verbose --exit-on-error --jobs="${RESTORE_JOBS:-2}" --create --dbname=postgres \
      "$staging/$name" 2>"$report" || restore_failed "$report" "$database"
  fi
  stop_progress
  restore_progress "$label done" "$report" "$items" "$started"
done

for name in "${files[@]}"; do verified "$name"; done
wait "$downloader" || die "downloading the image failed"
log "all ${#files[@]} file(s) match their sha256"

log "analyzing"
interruptible vacuumdb --all --analyze-only --quiet --jobs="${RESTORE_JOBS:-2}" || die "analyze failed"
pg_ctl -D "$pgdata" stop -m fast -w >/dev/null || die "temporary server did not stop cleanly"
log "restore complete into $pgdata"
