#!/usr/bin/env bash
# Point-in-time restore job (docs/pitr.md): a base backup and the archived WAL after it become a
# data directory on the volume, replayed to RESTORE_PLAN's target_time (or to the end of the
# archive: `latest`) and promoted. Nothing fetches WAL while the server runs: every segment the
# plan names is downloaded, decrypted, decompressed and checked against its sha256 first (exit 3
# on a mismatch), so the temporary server's restore_command is a plain copy holding no credential.
#
# Environment: records/job_scripts.py PitrRestoreEnv (every variable, who supplies it, what it means).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore-pitr
: "${VOLUME_PATH:?}" "${BLOB_URL:?}" "${PLAN_BLOB:?}" "${PLAN_SHA256:?}" "${POSTGRES_USER:?}"
load_secrets

pgdata="$VOLUME_PATH/pgdata"
staging="$VOLUME_PATH/pitr-staging"
# Unix socket paths are limited to ~107 bytes: a long TMPDIR falls back to /tmp.
tmp_root=${TMPDIR:-/tmp}
((${#tmp_root} <= 60)) || tmp_root=/tmp
socket_dir=$(mktemp -d "$tmp_root/toygres-pitr.XXXXXX")
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

# Everything in the base backup is the tenant's (docs/security.md): its configuration files could
# name commands (recovery_end_command, archive_cleanup_command, ssl_passphrase_command), libraries
# (shared/session/local_preload_libraries, jit_provider), files outside the data directory
# (external_pid_file, log_directory, hba_file, include) and a standby.signal that never promotes
# and connects out (primary_conninfo). The replay therefore reads none of them: postgresql.conf is
# replaced by ours (config_file), postgresql.auto.conf (always read from the data directory) waits
# in the staging directory until the server has stopped, and the signal files are ours alone.
# No link may lead out of the data directory (pg_tblspc entries included).
if links=$(find "$pgdata" -type l -printf '%P ' -quit) && [[ -n "$links" ]]; then
  die "the base backup holds a symbolic link ($(shown "${links% }")): tablespaces and links out of the data directory are not restorable"
fi
rm -f "$pgdata/standby.signal" "$pgdata/recovery.signal" "$pgdata/postmaster.opts"
if [[ -e "$pgdata/postgresql.auto.conf" ]]; then mv "$pgdata/postgresql.auto.conf" "$staging/postgresql.auto.conf"; fi

# Replay needs what the source ran with (prepared transactions and their locks): the values its
# control file recorded, or larger ones its own files set (plain integers only, bounded).
controldata=$(pg_controldata "$pgdata") || die "the base backup has no readable control file"
sizing() { # $1: setting, $2: pg_controldata's label -> the larger of both, at most 10000
  local value from_files
  value=$(sed -nE "s/^$2 setting: +([0-9]+)\$/\1/p" <<<"$controldata")
  from_files=$(cat "$pgdata/postgresql.conf" "$staging/postgresql.auto.conf" 2>/dev/null \
    | sed -nE "s/^[[:space:]]*$1[[:space:]]*=?[[:space:]]*'?([0-9]{1,5})'?[[:space:]]*(#.*)?\$/\1/p" | sort -n | tail -n 1)
  value=$(( ${value:-0} > ${from_files:-0} ? ${value:-0} : ${from_files:-0} ))
  printf '%s = %d\n' "$1" $(( value > 10000 ? 10000 : value ))
}
{
  printf "listen_addresses = ''\nunix_socket_directories = '%s'\nunix_socket_permissions = 0700\n" "$socket_dir"
  printf "hba_file = '%s/pg_hba.conf'\nident_file = '%s/pg_ident.conf'\n" "$socket_dir" "$socket_dir"
  # No session before promotion (the tenant's catalogue is not consistent yet), no autovacuum or
  # JIT after it (autoanalyze runs the tenant's index expressions), nothing archived or logged
  # anywhere but the job's own log.
  printf "hot_standby = off\nautovacuum = off\njit = off\narchive_mode = off\nlogging_collector = off\n"
  printf "restore_command = 'cp %s/%%f %%p'\n" "$staging/wal"
  printf "recovery_target_action = 'promote'\n"
  if [[ -n "$target" ]]; then
    printf "recovery_target_time = '%s'\n" "$target"
    printf "recovery_target_inclusive = on\n"
  fi
  sizing max_connections max_connections
  sizing max_worker_processes max_worker_processes
  sizing max_wal_senders max_wal_senders
  sizing max_prepared_transactions max_prepared_xacts
  sizing max_locks_per_transaction max_locks_per_xact
} >"$socket_dir/postgresql.conf"
printf 'local all all trust\n' >"$socket_dir/pg_hba.conf"
: >"$socket_dir/pg_ident.conf"
touch "$pgdata/recovery.signal"
log "replaying WAL to ${target:-the end of the archive}"

# The server's environment holds no secret (no password, no grant or key path); the sessions this
# job opens override the tenant's per-role and per-database settings (client options win over
# them): no search_path of its choosing, no library loaded at connection, nothing logged.
env -i PATH="$PATH" LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME="$socket_dir" \
  pg_ctl -D "$pgdata" -w -t 600 -l "$socket_dir/postgres.log" start -o "-c config_file=$socket_dir/postgresql.conf" >/dev/null \
  || { tail -n 30 "$socket_dir/postgres.log" >&2; die "recovery did not start"; }
export -n PGPASSWORD
export PGHOST="$socket_dir" PGUSER="$POSTGRES_USER" PGDATABASE=postgres
export PGOPTIONS="-c search_path=pg_catalog -c session_preload_libraries= -c local_preload_libraries= -c log_statement=none -c default_transaction_read_only=off"
until [[ "$(psql -X -Atqc 'SELECT pg_catalog.pg_is_in_recovery()' 2>/dev/null)" == f ]]; do
  if ! pg_ctl -D "$pgdata" status >/dev/null 2>&1; then
    tail -n 30 "$socket_dir/postgres.log" >&2
    die "recovery ended before it reached ${target:-the end of the archive}"
  fi
  sleep 0.5
done
replayed=$(psql -X -Atqc 'SELECT pg_catalog.pg_last_xact_replay_timestamp()')
log "promoted; last transaction replayed committed at ${replayed:-unknown}"

# The instance's Secret is what clients will use from now on.
printf 'ALTER ROLE "%s" PASSWORD '"'"'%s'"'"';\n' "${POSTGRES_USER//\"/\"\"}" "${PGPASSWORD//\'/\'\'}" \
  | psql -X -q -v ON_ERROR_STOP=1 >/dev/null || die "setting the instance's password failed"
pg_ctl -D "$pgdata" stop -m fast -w >/dev/null || die "the restored server did not stop cleanly"
# The tenant's own settings are its instance's again (the recovery settings never were in them).
if [[ -e "$staging/postgresql.auto.conf" ]]; then mv "$staging/postgresql.auto.conf" "$pgdata/postgresql.auto.conf"; fi
rm -f "$pgdata/recovery.signal"
log "point-in-time restore complete into $pgdata"
