#!/usr/bin/env bash
# Restore job: download an image, verify every file's sha256, then build a data directory on
# the volume from it (initdb, roles, the superuser password from the instance's Secret,
# pg_restore of each database under its exact name from the manifest), and stop cleanly.
# A checksum mismatch exits before initdb, so it can never lead to a running instance.
#
# Env: VOLUME_PATH (the volume; PGDATA becomes $VOLUME_PATH/pgdata) BLOB_URL (image folder)
#      MANIFEST_SHA256 (from the CMS row) BACKUP_SHA256SUMS (sha256sum -c lines, from the
#      verified manifest) POSTGRES_USER (superuser), PGPASSWORD or POSTGRES_PASSWORD_FILE,
#      optional RESTORE_JOBS (pg_restore -j), TRANSFER_STALL_SECONDS (see common.sh),
#      AGE_IDENTITY_FILE (age private keys, mounted; needed when the manifest says the files are encrypted)
#      RESTORE_DATABASES (a JSON array of database names: restore only those; unset: all)
#      (a parallel-mode image: RESTORE_JOBS is its parallel_jobs)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore
: "${VOLUME_PATH:?}" "${BLOB_URL:?}" "${MANIFEST_SHA256:?}" "${BACKUP_SHA256SUMS:?}" "${POSTGRES_USER:=postgres}"
load_secrets
: "${PGPASSWORD:?the instance password is required}"

pgdata="$VOLUME_PATH/pgdata"
staging="$VOLUME_PATH/restore-staging"
# Unix socket paths are limited to ~107 bytes, so the private socket lives directly in /tmp.
socket_dir=$(mktemp -d /tmp/toygres-restore.XXXXXX)
cleanup() {
  stop_background_steps
  if [[ -f "$pgdata/postmaster.pid" ]]; then pg_ctl -D "$pgdata" stop -m fast -w >/dev/null 2>&1 || true; fi
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

# decrypt_files FILE...: each verified ciphertext replaced by its plaintext (age authenticates every chunk).
decrypt_files() {
  [[ -n "$encrypted_for" ]] || return 0
  local name
  for name in "$@"; do
    log "decrypting $name"
    interruptible age --decrypt -i "$AGE_IDENTITY_FILE" --output "$staging/$name.plain" "$staging/$name" \
      || die "decrypting $name failed"
    mv "$staging/$name.plain" "$staging/$name"
  done
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

mapfile -t files < <(printf '%s\n' "$BACKUP_SHA256SUMS" | awk 'NF {print $2}')
for name in "${files[@]}"; do
  total=$(jq -r --arg path "$name" '.files[] | select(.path == $path) | .size_bytes' "$staging/manifest.json")
  log "downloading $name ($(mib "$total"))"
  started=$SECONDS
  mkdir -p "$(dirname "$staging/$name")" # a directory-format dump (parallel mode) is a folder of files
  start_progress download_progress "$name" "$staging/$name" "$total" "$started"
  download_file "$name" "$staging/$name" || die "download of $name failed"
  stop_progress
  download_progress "$name done" "$staging/$name" "$total" "$started"
done
log "verifying sha256 of ${#files[@]} file(s)"
if ! (cd "$staging" && printf '%s\n' "$BACKUP_SHA256SUMS" | sha256sum --check --strict --quiet); then
  die "checksum mismatch: the downloaded image does not match its manifest" 3
fi
decrypt_files "${files[@]}"

log "initdb in $pgdata"
# initdb reads one line of its password file: it gets a throwaway password, and the real one
# (which may hold any character, line breaks too) is set by ALTER ROLE once the roles are in.
pwfile="$socket_dir/pw"
head -c 24 /dev/urandom | base64 >"$pwfile"
initdb -D "$pgdata" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
  --encoding=UTF8 --locale=C.UTF-8 >/dev/null
rm -f "$pwfile"

# The temporary server listens on a private socket only, trusting nobody but that socket.
printf 'local all all trust\n' >"$socket_dir/pg_hba.conf"
pg_ctl -D "$pgdata" -w -t 120 -l "$socket_dir/postgres.log" start \
  -o "-c listen_addresses='' -c unix_socket_directories=$socket_dir -c hba_file=$socket_dir/pg_hba.conf" >/dev/null \
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
selected_databases() {
  jq -j --argjson wanted "${RESTORE_DATABASES:-null}" '.files[] | select(.kind == "database")
    | .database as $name | select($wanted == null or any($wanted[]; . == $name))
    | select(.archive == null or .path == .archive + "/toc.dat")
    | (.archive // .path), "\u0000", .database, "\u0000"' "$1"
}

# Names come from the verified manifest, NUL-separated: each database keeps its exact name.
# A directory-format dump (parallel mode) is restored from its archive folder, named once (by its toc.dat).
selected_databases "$staging/manifest.json" >"$socket_dir/databases" || die "manifest.json lists no readable databases"
mapfile -d '' -t entries <"$socket_dir/databases"
if [[ -n "${RESTORE_DATABASES:-}" ]]; then
  wanted=$(jq -r 'length' <<<"$RESTORE_DATABASES") || die "RESTORE_DATABASES is not a JSON array of names"
  ((${#entries[@]} == 2 * wanted)) || die "the image holds $((${#entries[@]} / 2)) of the ${wanted} database(s) asked for"
  log "restoring ${wanted} of the image's databases (selected); roles are restored whole"
fi
for ((i = 0; i < ${#entries[@]}; i += 2)); do
  name=${entries[i]} database=${entries[i + 1]}
  [[ -e "$staging/$name" && -n "$database" ]] || die "manifest entry $(shown "$name") names no verified dump or no database"
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

log "analyzing"
interruptible vacuumdb --all --analyze-only --quiet || die "analyze failed"
pg_ctl -D "$pgdata" stop -m fast -w >/dev/null || die "temporary server did not stop cleanly"
log "restore complete into $pgdata"
