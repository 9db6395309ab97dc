#!/usr/bin/env bash
# Base backup job (point-in-time recovery, docs/pitr.md): pg_basebackup of the running instance
# (plain format, WAL streamed alongside so the copy is consistent on its own), checked with
# pg_verifybackup (the backup manifest's checksums and the WAL it needs), then one tar stream,
# zstd-compressed (age-encrypted with AGE_RECIPIENT), hashed and uploaded as base.tar.zst[.age],
# and pitr.json (records/wal.py BaseBackupResult) beside it.
#
# Environment: records/job_scripts.py BaseBackupEnv (every variable, who supplies it, what it means).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=basebackup
: "${PGHOST:?}" "${PGPORT:?}" "${PGUSER:?}" "${BLOB_URL:?}" "${SOURCE_INSTANCE:?}" "${SOURCE_NAMESPACE:?}"
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-15}" PGDATABASE=postgres
# The tenant's settings (a search_path naming its schemas ahead of pg_catalog, timeouts...) must
# not decide this job's catalogue queries (common.sh); pg_dump and pg_dumpall set theirs too.
export PGOPTIONS="$TENANT_SESSION_OPTIONS $NAMES_AS_BYTES"
load_secrets

work=$(mktemp -d "${TMPDIR:-/tmp}/toygres-basebackup.XXXXXX")
trap 'stop_background_steps; rm -rf "$work"' EXIT

server_version_num=$(psql -w -X -Atqc 'SHOW server_version_num') || die "cannot connect to ${SOURCE_INSTANCE} at ${PGHOST}:${PGPORT}"
postgres_version=$((server_version_num / 10000))
system_identifier=$(psql -w -X -Atqc 'SELECT system_identifier FROM pg_control_system()')
log "base backup of ${SOURCE_NAMESPACE}/${SOURCE_INSTANCE} (PostgreSQL ${postgres_version}, system ${system_identifier})"

# A tablespace lives outside the data directory: the plain copy restored into one volume would lack
# it, so such a source is refused rather than given a `ready` base backup that cannot be restored.
refuse_tablespaces() {
  [[ -z "$1" ]] || die "the source has tablespaces (${1}): a base backup copies one data directory and a tablespace lives outside it, so it could not be restored; move their objects to pg_default and drop them"
}
tablespaces=$(psql -w -X -Atqc "SELECT left(string_agg(regexp_replace(spcname, '[^a-zA-Z0-9_.-]', '?', 'g'),
  ', ' ORDER BY spcname), 300) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')") \
  || die "cannot list the tablespaces of ${SOURCE_INSTANCE}"
refuse_tablespaces "$tablespaces"

interruptible pg_basebackup -w -D "$work/data" -Fp -X stream --checkpoint=fast --no-sync \
  --label="toygres base backup" 2>&1 | redact \
  || die "pg_basebackup failed"
# The backup is consistent once its end-of-backup record is replayed: no target before this second.
consistent_at=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
# One created while the copy ran.
refuse_tablespaces "$(find "$work/data/pg_tblspc" -mindepth 1 -maxdepth 1 -printf '%f ' | head -c 300)"
interruptible pg_verifybackup "$work/data" 2>&1 | redact || die "pg_verifybackup failed: the copy does not match its manifest"
log "pg_verifybackup: every file matches the backup manifest, the WAL it needs parses"

start_line=$(grep '^START WAL LOCATION:' "$work/data/backup_label")
start_segment=$(sed -E 's/.*\(file ([0-9A-F]{24})\).*/\1/' <<<"$start_line")
timeline=$(sed -nE 's/^START TIMELINE: ([0-9]+)$/\1/p' "$work/data/backup_label")
[[ "$start_segment" =~ ^[0-9A-F]{24}$ && "$timeline" =~ ^[0-9]+$ ]] || die "backup_label names no start segment"

name="base.tar.zst${AGE_RECIPIENT:+.age}"
encrypt() { if [[ -n "${AGE_RECIPIENT:-}" ]]; then age --encrypt --recipient "$AGE_RECIPIENT"; else cat; fi; }
mkfifo "$work/hash-pipe" "$work/size-pipe"
sha256sum <"$work/hash-pipe" | cut -d' ' -f1 >"$work/sha256" &
hash_pid=$!
wc -c <"$work/size-pipe" >"$work/size" &
size_pid=$!
status=0
tar -C "$work/data" -cf - . | zstd -q -3 -T0 | encrypt | tee "$work/hash-pipe" "$work/size-pipe" \
  | upload_stdin "$name" || status=$?
wait "$hash_pid" || status=$?
wait "$size_pid" || status=$?
((status == 0)) || die "upload of $name failed"

jq -n --arg sysid "$system_identifier" --argjson tli "$timeline" --arg seg "$start_segment" \
  --arg at "$consistent_at" --argjson size "$(tr -d ' ' <"$work/size")" --arg sha "$(<"$work/sha256")" \
  --arg ver "$postgres_version" --arg rcpt "${AGE_RECIPIENT:-}" --arg name "$name" \
  '{format: 1, system_identifier: $sysid, timeline: $tli, start_segment: $seg, consistent_at: $at,
    size_bytes: $size, sha256: $sha, postgres_version: $ver,
    encryption_recipient: (if $rcpt == "" then null else $rcpt end), files: [$name]}' >"$work/pitr.json"
cat "$work/pitr.json" | upload_stdin pitr.json || die "upload of pitr.json failed"
log "base backup stored: $(mib "$(tr -d ' ' <"$work/size")"), start ${start_segment}, consistent at ${consistent_at}"
