#!/usr/bin/env bash
# Point-in-time restore job (docs/pitr.md): a base backup and the archived WAL after it become a
# data directory on the volume, replayed to RESTORE_PLAN's target_time (or to the end of the
# archive: `latest`) and promoted. Nothing fetches WAL while the server runs: every segment the
# plan names is downloaded, decrypted, decompressed and checked against its sha256 first (exit 3
# on a mismatch), so the temporary server's restore_command is a plain copy holding no credential.
#
# Env: VOLUME_PATH (PGDATA becomes $VOLUME_PATH/pgdata) BLOB_URL (the container) PLAN_BLOB (the
#      plan's blob name) PLAN_SHA256 (its sha256, from the op that wrote it) POSTGRES_USER,
#      AGE_IDENTITY_FILE (encrypted backups), TRANSFER_STALL_SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore-pitr
: "${VOLUME_PATH:?}" "${BLOB_URL:?}" "${PLAN_BLOB:?}" "${PLAN_SHA256:?}" "${POSTGRES_USER:?}"
load_secrets

pgdata="$VOLUME_PATH/pgdata"
staging="$VOLUME_PATH/pitr-staging"
socket_dir=$(mktemp -d /tmp/toygres-pitr.XXXXXX)
cleanup() {
  local status=$?
  stop_background_steps
  if [[ -f "$pgdata/postmaster.pid" ]]; then pg_ctl -D "$pgdata" stop -m immediate -w >/dev/null 2>&1 || true; fi
  if ((status != 0)); then rm -rf "$pgdata"; fi
  rm -rf "$staging" "$socket_dir"
}
trap cleanup EXIT
rm -rf "$staging" "$pgdata"
mkdir -p "$staging/wal"

download_file "$PLAN_BLOB" "$staging/plan.json" || die "download of the restore plan failed"
[[ "$(sha256sum <"$staging/plan.json" | cut -d' ' -f1)" == "$PLAN_SHA256" ]] || die "the restore plan is not the one planned" 3

plaintext() { # $1: encrypted (true/false): stdin stored bytes -> stdout plaintext
  if [[ "$1" == true ]]; then
    [[ -n "${AGE_IDENTITY_FILE:-}" ]] || die "the backup is encrypted and this job has no age identity"
    age --decrypt -i "$AGE_IDENTITY_FILE" | zstd -q -d -c
  else
    zstd -q -d -c
  fi
}

base_blob=$(jq -r .base.blob "$staging/plan.json")
log "downloading base backup ${base_blob}"
download_file "$base_blob" "$staging/base" || die "download of the base backup failed"
[[ "$(sha256sum <"$staging/base" | cut -d' ' -f1)" == "$(jq -r .base.sha256 "$staging/plan.json")" ]] \
  || die "base backup ${base_blob}: sha256 mismatch" 3
mkdir -m 700 "$pgdata"
plaintext "$(jq -r .base.encrypted "$staging/plan.json")" <"$staging/base" | tar -C "$pgdata" -xf - \
  || die "the base backup does not extract"
rm -f "$staging/base"
chmod 700 "$pgdata"

count=$(jq '.segments | length' "$staging/plan.json")
log "downloading ${count} WAL segment(s)"
for ((i = 0; i < count; i++)); do
  IFS=$'\t' read -r blob segment sha encrypted < <(jq -r ".segments[$i] | [.blob, .segment, .sha256, .encrypted] | @tsv" "$staging/plan.json")
  [[ "$segment" =~ ^[0-9A-F]{24}$ ]] || die "the plan names a segment that is not one: $(shown "$segment")"
  download_file "$blob" "$staging/stored" || die "download of WAL ${segment} failed"
  plaintext "$encrypted" <"$staging/stored" >"$staging/wal/$segment" || die "WAL ${segment} does not decode"
  [[ "$(sha256sum <"$staging/wal/$segment" | cut -d' ' -f1)" == "$sha" ]] || die "WAL ${segment}: sha256 mismatch" 3
done
rm -f "$staging/stored"

target=$(jq -r '.target_time // empty' "$staging/plan.json")
# PostgreSQL's own timestamp syntax (it refuses ISO 8601's trailing Z)
if [[ -n "$target" ]]; then target=$(date -u -d "$target" '+%Y-%m-%d %H:%M:%S.%6N+00') || die "target_time unreadable"; fi
{
  printf "restore_command = 'cp %s/%%f %%p'\n" "$staging/wal"
  printf "recovery_target_action = 'promote'\n"
  if [[ -n "$target" ]]; then
    printf "recovery_target_time = '%s'\n" "$target"
    printf "recovery_target_inclusive = on\n"
  fi
} >>"$pgdata/postgresql.auto.conf"
touch "$pgdata/recovery.signal"
log "replaying WAL to ${target:-the end of the archive}"

printf 'local all all trust\n' >"$socket_dir/pg_hba.conf"
pg_ctl -D "$pgdata" -w -t 600 -l "$socket_dir/postgres.log" start \
  -o "-c listen_addresses='' -c unix_socket_directories=$socket_dir -c hba_file=$socket_dir/pg_hba.conf \
  -c archive_mode=off" >/dev/null \
  || { tail -n 30 "$socket_dir/postgres.log" >&2; die "recovery did not start"; }
export PGHOST="$socket_dir" PGUSER="$POSTGRES_USER" PGDATABASE=postgres
until [[ "$(psql -X -Atqc 'SELECT pg_is_in_recovery()' 2>/dev/null)" == f ]]; do
  if ! pg_ctl -D "$pgdata" status >/dev/null 2>&1; then
    tail -n 30 "$socket_dir/postgres.log" >&2
    die "recovery ended before it reached ${target:-the end of the archive}"
  fi
  sleep 0.5
done
replayed=$(psql -X -Atqc 'SELECT pg_last_xact_replay_timestamp()')
log "promoted; last transaction replayed committed at ${replayed:-unknown}"

# Recovery settings go (the next start must not look for the staging directory), and the
# instance's Secret is what clients will use from now on.
{
  printf 'ALTER SYSTEM RESET restore_command;\nALTER SYSTEM RESET recovery_target_action;\n'
  printf 'ALTER SYSTEM RESET recovery_target_time;\nALTER SYSTEM RESET recovery_target_inclusive;\n'
  printf 'ALTER ROLE "%s" PASSWORD '"'"'%s'"'"';\n' "${POSTGRES_USER//\"/\"\"}" "${PGPASSWORD//\'/\'\'}"
} | psql -X -q -v ON_ERROR_STOP=1 >/dev/null || die "resetting the recovery settings failed"
pg_ctl -D "$pgdata" stop -m fast -w >/dev/null || die "the restored server did not stop cleanly"
log "point-in-time restore complete into $pgdata"
