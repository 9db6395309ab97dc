#!/usr/bin/env bash
# Restore job, fetch role: download an image, check each file's sha256 before anything reads it,
# decrypt it, and hand the plaintext to the serve role (restore-serve.sh) through the handoff
# directory. This role holds the deployment's credentials (the SAS, the age identity) and runs no
# code of the image; the serve role runs the image's code and holds none of them (docs/security.md).
# The steps overlap: files download (and are hashed) in the background while the serve role runs
# initdb and restores earlier databases. A checksum mismatch exits 3 and nothing of the image is
# handed over any more: the serve role fails, and no data directory can reach a running instance.
#
# Environment: records/job_scripts.py RestoreFetchEnv (every variable, who supplies it, what it means).
#
# The handoff (its roles declared once: resources/platform/base.py RestoreRoles):
#   $RESTORE_HANDOFF/.fetch/      this role's staging (mode 0700: the serve role cannot enter it)
#   $RESTORE_HANDOFF/data/        verified plaintext: meta/manifest.json, meta/databases (NUL-separated
#                                 "path NUL database NUL" of each database to restore), globals.sql,
#                                 each database's dump file or archive folder
#   $RESTORE_HANDOFF/ready/KEY    KEY handed over: manifest, globals, db-<N> (the Nth database), all-verified
#   $RESTORE_HANDOFF/failed       this role failed (its message): the serve role stops
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore
: "${RESTORE_HANDOFF:?}" "${BLOB_URL:?}" "${MANIFEST_SHA256:?}"
load_secrets

# Created in the setgid handoff directory, the staging area and what moves out of it belong to the
# serve role's group; only what is verified (and decrypted) is made readable to it.
begin_fetch_role

# The platform made data/ and ready/ (mode 2750). No chmod of a setgid directory here: made by a
# user outside its group, that would clear the bit, and what is created inside would stop
# belonging to the serve role's group. umask 077 keeps the staging area closed to it.
mkdir -p "$staging/databases" "$staging/hashed"

# hand_over PATH KEY: PATH (under $staging; a file or an archive folder) moved to data/, readable by
# the serve role, then KEY announced.
hand_over() {
  if [[ -n "$1" ]]; then
    mkdir -p "$(dirname "$handoff/data/$1")"
    chmod -R g+rX "$staging/$1"
    mv "$staging/$1" "$handoff/data/$1"
    local dir
    dir=$(dirname "$1")
    while [[ "$dir" != . ]]; do chmod g+rx "$handoff/data/$dir" && dir=$(dirname "$dir"); done
  fi
  : >"$handoff/ready/.$2" && mv "$handoff/ready/.$2" "$handoff/ready/$2"
}

log "downloading manifest.json"
download_file manifest.json "$staging/manifest.json" || die "download of manifest.json failed"
actual=$(sha256sum "$staging/manifest.json" | cut -d' ' -f1)
[[ "$actual" == "$MANIFEST_SHA256" ]] || die "checksum mismatch: manifest.json has sha256 $actual, the CMS recorded $MANIFEST_SHA256" 3
manifest="$staging/manifest.json"

# An encrypted image: the mounted identities must open it, checked before anything is downloaded.
encrypted_for=$(jq -r '.encryption.recipient // empty' "$manifest")
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

# Without BACKUP_SHA256SUMS (too long for one environment variable: a parallel image of thousands of
# tables) the same list comes from the verified manifest: the roles and the chosen databases.
if [[ -z "${BACKUP_SHA256SUMS:-}" ]]; then
  BACKUP_SHA256SUMS=$(jq -r --argjson wanted "${RESTORE_DATABASES:-null}" '.files[]
    | select(.kind != "database" or $wanted == null or (.database as $name | any($wanted[]; . == $name)))
    | "\(.sha256)  \(.path)"' "$manifest") || die "manifest.json lists no files"
fi
mapfile -t files < <(printf '%s\n' "$BACKUP_SHA256SUMS" | awk 'NF {print $2}')

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
mkdir -p "$staging/meta"
selected_databases "$manifest" >"$staging/meta/databases" || die "manifest.json lists no readable databases"
mapfile -d '' -t entries <"$staging/meta/databases"
if [[ -n "${RESTORE_DATABASES:-}" ]]; then
  wanted=$(jq -r 'length' <<<"$RESTORE_DATABASES") || die "RESTORE_DATABASES is not a JSON array of names"
  ((${#entries[@]} == 2 * wanted)) || die "the image holds $((${#entries[@]} / 2)) of the ${wanted} database(s) asked for"
  log "restoring ${wanted} of the image's databases (selected); roles are restored whole"
fi
for ((i = 0; i < ${#entries[@]}; i += 2)); do
  [[ -n "${entries[i + 1]}" ]] || die "manifest entry $(shown "${entries[i]}") names no database"
done
cp "$manifest" "$staging/meta/manifest.json"
hand_over meta manifest

# download_all: every file in turn, each hashed as soon as it is down; $staging/hashed/N holds
# the sha256 of the Nth file once it is complete. Runs in the background while the rest goes on.
download_all() {
  local index=0 name total started
  # Stopped by the job's cleanup: stop this step's own azcopy and progress reporter too
  trap 'stop_background_steps; exit 143' TERM
  for name in "${files[@]}"; do
    total=$(jq -r --arg path "$name" '.files[] | select(.path == $path) | .size_bytes' "$manifest")
    log "downloading $name ($(mib "$total"))"
    started=$SECONDS
    mkdir -p "$(dirname "$staging/$name")" # a directory-format dump (parallel mode) is a folder of files
    start_progress download_progress "$name" "$staging/$name" "$total" "$started"
    download_file "$name" "$staging/$name" || die "download of $name failed"
    stop_progress
    download_progress "$name done" "$staging/$name" "$total" "$started"
    sha256sum <"$staging/$name" | cut -d' ' -f1 >"$staging/hashed/$index.tmp"
    mv "$staging/hashed/$index.tmp" "$staging/hashed/$index"
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
  while [[ ! -e "$staging/hashed/$index" ]]; do
    kill -0 "$downloader" 2>/dev/null || [[ -e "$staging/hashed/$index" ]] || { wait "$downloader" || true; die "download of $1 failed"; }
    sleep 0.1
  done
  expected=$(printf '%s\n' "$BACKUP_SHA256SUMS" | awk -v name="$1" 'NF && $2 == name {print $1; exit}')
  actual=$(<"$staging/hashed/$index")
  [[ "$actual" == "$expected" ]] || die "checksum mismatch: $1 has sha256 $actual, the manifest says $expected" 3
}

# ready_to_read NAME: NAME (a file, or a directory-format dump's archive folder: each of its files)
# verified and, for an encrypted image, decrypted.
ready_to_read() {
  local member
  if jq -e --arg archive "$1" 'any(.files[]; .archive == $archive)' "$manifest" >/dev/null; then
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

ready_to_read globals.sql
hand_over globals.sql globals
for ((i = 0; i < ${#entries[@]}; i += 2)); do
  ready_to_read "${entries[i]}"
  hand_over "${entries[i]}" "db-$((i / 2))"
done

for name in "${files[@]}"; do verified "$name"; done
wait "$downloader" || die "downloading the image failed"
log "all ${#files[@]} file(s) match their sha256"
hand_over "" all-verified
