#!/usr/bin/env bash
# Point-in-time restore job, serve role (docs/pitr.md, docs/security.md): what the fetch role
# (restore-pitr.sh) verified and decoded becomes a data directory, replayed to the target and
# promoted. Replay and the queries after promotion run the tenant's catalogue and data, so this
# role holds nothing of the deployment: no grant, no key, no password (only the SCRAM verifier of
# the instance's password), a scrubbed environment, and the platform gives it its own OS user /
# container and no network.
#
# Environment: records/job_scripts.py PitrRestoreServeEnv (every variable, who supplies it, what it means).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore-pitr
: "${VOLUME_PATH:?}" "${RESTORE_HANDOFF:?}" "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD_VERIFIER_FILE:?}"

read_verifier

handoff="$RESTORE_HANDOFF/data"
pgdata="$VOLUME_PATH/pgdata"
socket_dir=$(socket_tmpdir toygres-pitr)
staging="$socket_dir/tenant"
cleanup() {
  local status=$?
  stop_background_steps
  if [[ -f "$pgdata/postmaster.pid" ]]; then pg_ctl -D "$pgdata" stop -m immediate -w >/dev/null 2>&1 || true; fi
  if ((status != 0)); then rm -rf "$pgdata"; fi
  rm -rf "$socket_dir"
}
trap cleanup EXIT
rm -rf "$pgdata"
mkdir -p "$staging"

# The base backup is extracted once the fetch role has verified it; the server starts right after,
# while the fetch role still downloads and verifies segments (its restore_command waits for them).
handed_over plan
handed_over base
mkdir -m 700 "$pgdata"
zstd -q -d -c "$handoff/base.tar.zst" | tar -C "$pgdata" -xf - || die "the base backup does not extract"
chmod 700 "$pgdata"
target=$(<"$handoff/target")

# The server's restore_command (%f %p). It hands the server only what the fetch role verified:
# - a planned segment: waits for the fetch role's verified copy (renamed into wal/ once checked)
#   and copies it;
# - any other name (a .history file, the next timeline, a segment past the plan) is "not in the
#   archive" (exit 1), at once while replay has not begun. Once it has, that answer is what ends
#   recovery (the end of the archive, or the new-timeline probe PostgreSQL makes before it
#   promotes at a target), so it waits for ready/all-verified first: **the server never promotes
#   before the fetch role declared every planned segment verified**;
# - when the fetch role failed (a changed segment, a download error) or nothing came within the
#   deadline: exit 126. PostgreSQL takes an exit status above 125 as fatal and aborts recovery
#   (exit 1 would read as the end of the archive and promote early); the job then fails with the
#   fetch role's status.
WAL_WAIT_SECONDS=1800
{
  printf '#!/usr/bin/env bash\nset -u\n'
  printf 'handoff=%q replaying=%q wait_seconds=%d\n' "$RESTORE_HANDOFF" "$socket_dir/replaying" "$WAL_WAIT_SECONDS"
  cat <<'RESTORE_COMMAND'
planned=false
if grep -qxF -e "$1" "$handoff/data/segments"; then planned=true; elif [[ ! -e "$replaying" ]]; then exit 1; fi
deadline=$((SECONDS + wait_seconds))
until [[ -e "$handoff/failed" ]]; do
  if [[ "$planned" == true && -e "$handoff/data/wal/$1" ]]; then
    : >"$replaying"
    cp "$handoff/data/wal/$1" "$2" || exit 126
    exit 0
  fi
  if [[ "$planned" == false && -e "$handoff/ready/all-verified" ]]; then exit 1; fi
  if ((SECONDS >= deadline)); then
    echo "restore_command: ${1} not handed over within ${wait_seconds}s: recovery stops" >&2
    exit 126
  fi
  sleep 0.05
done
echo "restore_command: the fetch role failed: recovery stops (this is not the end of the archive)" >&2
exit 126
RESTORE_COMMAND
} >"$socket_dir/restore-command"

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
# control file recorded, the server's own record. Never its files' values: ALTER SYSTEM's wait in
# postgresql.auto.conf until a restart, and sizes the source never ran with (10000 connections and
# locks take about 149 GB of shared memory) would stop the replay server from starting.
controldata=$(pg_controldata "$pgdata") || die "the base backup has no readable control file"
sizing() { # $1: setting, $2: pg_controldata's label -> its value, at most 10000
  local value
  value=$(sed -nE "s/^$2 setting: +([0-9]+)\$/\1/p" <<<"$controldata")
  [[ -n "$value" ]] || die "the base backup's control file records no $2 setting"
  printf '%s = %d\n' "$1" $(( value > 10000 ? 10000 : value ))
}
{
  printf "listen_addresses = ''\nunix_socket_directories = '%s'\nunix_socket_permissions = 0700\n" "$socket_dir"
  printf "hba_file = '%s/pg_hba.conf'\nident_file = '%s/pg_ident.conf'\n" "$socket_dir" "$socket_dir"
  # No session before promotion (the tenant's catalogue is not consistent yet), no autovacuum or
  # JIT after it (autoanalyze runs the tenant's index expressions), nothing archived or logged
  # anywhere but the job's own log.
  printf "hot_standby = off\nautovacuum = off\njit = off\narchive_mode = off\nlogging_collector = off\n"
  printf "restore_command = 'bash %s/restore-command %%f %%p'\n" "$socket_dir"
  printf "recovery_target_action = 'promote'\n"
  printf "include_if_exists = '%s/target.conf'\n" "$socket_dir"
  sizing max_connections max_connections
  sizing max_worker_processes max_worker_processes
  sizing max_wal_senders max_wal_senders
  sizing max_prepared_transactions max_prepared_xacts
  sizing max_locks_per_transaction max_locks_per_xact
} >"$socket_dir/postgresql.conf"
if [[ -n "$target" ]]; then
  printf "recovery_target_time = '%s'\nrecovery_target_inclusive = on\n" "$target" >"$socket_dir/target.conf"
fi
printf 'local all all trust\n' >"$socket_dir/pg_hba.conf"
: >"$socket_dir/pg_ident.conf"
touch "$pgdata/recovery.signal"
log "replaying WAL to ${target:-the end of the archive}"

# The server's environment holds no secret (this role has none); the sessions this job opens
# override the tenant's per-role and per-database settings (common.sh), and no statement of theirs
# outlasts 10 s.
export PGHOST="$socket_dir" PGUSER="$POSTGRES_USER" PGDATABASE=postgres PGOPTIONS="$TENANT_SESSION_OPTIONS -c statement_timeout=10s"
# Promotion is the server's to say, not a session's: with hot_standby off it refuses every
# connection until recovery has ended (pg_isready: "rejecting"), and answers once promoted, whatever
# its catalogue holds (the tenant's database may be gone, its pg_is_in_recovery() may lie).
replay() { # -> 0: promoted; 1: the server stopped first (its log says why)
  env -i PATH="$PATH" LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME="$socket_dir" \
    pg_ctl -D "$pgdata" -w -t 600 -l "$socket_dir/postgres.log" start -o "-c config_file=$socket_dir/postgresql.conf" >/dev/null \
    || return 1
  until pg_isready -q; do
    pg_ctl -D "$pgdata" status >/dev/null 2>&1 || return 1
    sleep 0.5
  done
}
if ! replay; then
  if [[ -e "$RESTORE_HANDOFF/failed" ]]; then die "the fetch role failed: recovery stopped before promotion"; fi
  # A time target is reached only by a transaction committed after it. The plan checked that the
  # archive covers the target, so an archive with none after it already holds every commit up to
  # the target: its end is the state at the target. PostgreSQL keeps what it replayed and resumes.
  if [[ -n "$target" ]] && grep -q 'FATAL:  recovery ended before configured recovery target was reached' "$socket_dir/postgres.log"; then
    log "no transaction after the target in the archive (it covers the target): replaying to its end"
    rm -f "$socket_dir/target.conf"
    replay || { tail -n 30 "$socket_dir/postgres.log" >&2; die "recovery ended before the end of the archive"; }
  else
    tail -n 30 "$socket_dir/postgres.log" >&2
    die "recovery ended before it reached ${target:-the end of the archive}"
  fi
fi
# The invariant the restore_command keeps (it answered "not in the archive" only after this):
[[ -e "$RESTORE_HANDOFF/ready/all-verified" ]] || die "the server promoted before every planned segment was verified"
# The point replayed to, as the server's startup process logged it when redo ended (ISO, UTC: our
# configuration's), read before any session ran the tenant's catalogue (its own
# pg_last_xact_replay_timestamp(), its DateStyle, a line it could RAISE into this log later). The
# pitr drill compares it with the target.
replayed=$(sed -nE 's/^.* LOG:  last completed transaction was at log time ([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+[+-][0-9:]+)$/\1/p' \
  "$socket_dir/postgres.log" | tail -n 1)
log "promoted; last transaction replayed committed at ${replayed:-unknown}"
# A session confirms it, within 10 s, or the restore fails saying why (never waits on the tenant's catalogue).
said=$(psql -X -Atq -v ON_ERROR_STOP=1 -c 'SELECT pg_catalog.pg_is_in_recovery()' 2>"$socket_dir/session.err") \
  || die "the promoted server refuses the restore's session: $(tail -n 5 "$socket_dir/session.err" | head -c 500)"
[[ "$said" == f ]] || die "the promoted server answers that it is still in recovery (pg_is_in_recovery: $(shown "${said:0:100}"))"

# The instance's Secret is what clients will use from now on: only its SCRAM verifier reaches this
# role, set as a literal on stdin (never on a command line).
printf 'ALTER ROLE "%s" PASSWORD '"'"'%s'"'"';\n' "${POSTGRES_USER//\"/\"\"}" "$verifier" \
  | psql -X -q -v ON_ERROR_STOP=1 >/dev/null || die "setting the instance's password failed"
pg_ctl -D "$pgdata" stop -m fast -w >/dev/null || die "the restored server did not stop cleanly"
# The tenant's own settings are its instance's again (the recovery settings never were in them).
if [[ -e "$staging/postgresql.auto.conf" ]]; then mv "$staging/postgresql.auto.conf" "$pgdata/postgresql.auto.conf"; fi
rm -f "$pgdata/recovery.signal"
log "point-in-time restore complete into $pgdata"
