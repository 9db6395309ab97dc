#!/usr/bin/env bash
# Restore job, serve role: build a data directory from what the fetch role (restore.sh) hands over:
# initdb, the temporary server, roles, pg_restore of each database under its exact name from the
# manifest, analyze, the superuser password, and a clean stop. Everything an image holds is tenant
# code (functions, index expressions, defaults, triggers) and runs here as the temporary server's
# superuser, so this role holds nothing of the deployment: no SAS, no key, no password (only the
# SCRAM verifier of the instance's password, which the data directory stores anyway), its
# environment is scrubbed, its server listens on a Unix socket only, and the platform gives it no
# network (docs/security.md).
#
# Environment: records/job_scripts.py RestoreServeEnv (every variable, who supplies it, what it means).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore
: "${VOLUME_PATH:?}" "${RESTORE_HANDOFF:?}" "${POSTGRES_USER:=postgres}" "${POSTGRES_PASSWORD_VERIFIER_FILE:?}"

read_verifier

handoff="$RESTORE_HANDOFF/data"
pgdata="$VOLUME_PATH/pgdata"
work=$(socket_tmpdir toygres-restore)
cleanup() {
  local status=$?
  stop_background_steps
  if [[ -f "$pgdata/postmaster.pid" ]]; then pg_ctl -D "$pgdata" stop -m fast -w >/dev/null 2>&1 || true; fi
  # A failed restore leaves no half-made data directory behind (the steps overlap, so one may exist)
  if ((status != 0)); then rm -rf "$pgdata"; fi
  rm -rf "$work"
}
trap cleanup EXIT

# restore_progress LABEL VERBOSE_LOG ITEMS STARTED: archive items pg_restore has done so far (an
# estimate from its verbose log: some items are logged otherwise, parallel workers' lines interleave)
restore_progress() {
  local done elapsed=$((SECONDS - $4))
  done=$(grep -cE '^pg_restore: (creating|processing data for|executing) ' "$2" 2>/dev/null || true)
  # --create's DATABASE entry is logged but not listed: never show more than the archive holds
  ((${done:-0} <= $3)) || done=$3
  log "$1: ${done:-0} of $3 archive items restored in ${elapsed}s"
}

# Nothing is created before the fetch role has checked the manifest and the identity.
handed_over manifest
mapfile -d '' -t entries <"$handoff/meta/databases"

rm -rf "$pgdata"
log "initdb in $pgdata (while the files download)"
# initdb reads one line of its password file: it gets a throwaway password, replaced by the
# instance's verifier once the image's code has run.
pwfile="$work/pw"
head -c 24 /dev/urandom | base64 >"$pwfile"
interruptible initdb -D "$pgdata" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=scram-sha-256 \
  --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null || die "initdb failed"
rm -f "$pwfile"

# The temporary server listens on a private socket only, trusting nobody but that socket.
# Its commits need not wait for the WAL flush: the clean stop's checkpoint makes everything durable,
# and a restore that does not end cleanly removes the data directory anyway.
printf 'local all all trust\n' >"$work/pg_hba.conf"
pg_ctl -D "$pgdata" -w -t 120 -l "$work/postgres.log" start \
  -o "-c listen_addresses='' -c unix_socket_directories=$work -c hba_file=$work/pg_hba.conf \
  -c synchronous_commit=off" >/dev/null \
  || { cat "$work/postgres.log" >&2; die "temporary server did not start"; }
export PGHOST="$work" PGUSER="$POSTGRES_USER" PGDATABASE=postgres PGOPTIONS="$TENANT_SESSION_OPTIONS $NAMES_AS_BYTES"
# (the image's globals and --create restore its role's and databases' settings: a read-only
# default or a 1 ms statement timeout is the tenant's to keep, never this job's)

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

# The source's tablespaces live at its paths, outside the one volume an instance has: globals.sql's
# tablespace statements are left out, and pg_restore --no-tablespaces puts every object into the
# default tablespace (as TENANT_SESSION_OPTIONS does for a role's default_tablespace).
without_tablespaces() {
  grep -v -E '^((CREATE|ALTER) TABLESPACE |(COMMENT|SECURITY LABEL( FOR [^ ]+)?) ON TABLESPACE |(GRANT|REVOKE) [A-Z, ]+ ON TABLESPACE )' || true
}

handed_over globals
log "restoring roles"
globals_for_psql "$handoff/globals.sql" | grep -v -E "^CREATE ROLE \"?${POSTGRES_USER}\"?;$" | without_tablespaces \
  | psql -X -q -v ON_ERROR_STOP=1 >/dev/null || die "restoring roles failed"

restore_failed() { # $1: pg_restore's verbose log, $2: the database; its errors (not its progress) go to the log
  grep -vE '^pg_restore: (creating|processing data for|executing|launching item|finished item|connecting) ' "$1" \
    | tail -n 20 >&2 || true
  die "pg_restore of $(shown "$2") failed"
}

# report_dangerous_content ARCHIVE DATABASE: what of the image's code runs with the server's rights,
# read from the archive's TOC and schema (nothing is run): event triggers, extensions, functions in
# an untrusted language or running COPY ... PROGRAM, index expressions calling non-built-in
# functions. Each finding is one log line "dangerous content: ..." (the run's metadata lists them);
# with RESTORE_REFUSE_DANGEROUS=1, COPY ... PROGRAM and untrusted languages refuse the image (exit 4).
report_dangerous_content() {
  local archive=$1 database=$2 schema="$work/schema.sql" refuse="" line
  pg_restore --list "$archive" >"$work/toc" || die "pg_restore --list of $(shown "$database") failed"
  pg_restore --schema-only --file="$schema" "$archive" || die "reading the schema of $(shown "$database") failed"
  {
    grep -E '^[0-9]+; [0-9]+ [0-9]+ EVENT TRIGGER ' "$work/toc" | sed -E 's/^[0-9]+; [0-9]+ [0-9]+ /event trigger: /' || true
    grep -E '^[0-9]+; [0-9]+ [0-9]+ EXTENSION ' "$work/toc" | sed -E 's/^[0-9]+; [0-9]+ [0-9]+ EXTENSION - /extension: /' || true
    awk '
      /^CREATE (OR REPLACE )?(FUNCTION|PROCEDURE) / { name = $0; sub(/\(.*/, "", name); sub(/^CREATE (OR REPLACE )?/, "", name) }
      /^ *LANGUAGE [a-z0-9_]+/ && name != "" {
        lang = $0; sub(/^ *LANGUAGE /, "", lang); sub(/[^a-zA-Z0-9_].*/, "", lang)
        if (lang !~ /^(sql|plpgsql|plperl|pltcl|internal)$/) print "untrusted language " lang ": " name
      }
      tolower($0) ~ /copy[^;]*(from|to)[ \t]+program/ && name != "" { print "COPY ... PROGRAM in " name }
      /^CREATE (UNIQUE )?INDEX / {
        rest = $0; sub(/^[^(]*\(/, "", rest)
        if (match(rest, /[A-Za-z_"][A-Za-z0-9_"]*\.[A-Za-z_"][A-Za-z0-9_"]*\(/) && substr(rest, RSTART, 11) != "pg_catalog.")
          { idx = $0; sub(/ ON .*/, "", idx); sub(/^CREATE (UNIQUE )?INDEX /, "", idx); print "index " idx " calls " substr(rest, RSTART, RLENGTH - 1) "()" }
      }' "$schema"
  } | sort -u >"$work/findings"
  rm -f "$schema"
  while IFS= read -r line; do
    log "dangerous content: database $(shown "$database"): $line"
    if [[ "$line" == "untrusted language"* || "$line" == "COPY ... PROGRAM"* ]]; then refuse=1; fi
  done <"$work/findings"
  if [[ -n "$refuse" && "${RESTORE_REFUSE_DANGEROUS:-0}" == 1 ]]; then
    die "refused: database $(shown "$database") holds functions that run COPY ... PROGRAM or are in an untrusted language (RESTORE_REFUSE_DANGEROUS)" 4
  fi
}

for ((i = 0; i < ${#entries[@]}; i += 2)); do
  name=${entries[i]} database=${entries[i + 1]}
  handed_over "db-$((i / 2))"
  report_dangerous_content "$handoff/$name" "$database"
  exists=$(psql -X -Atq -v db="$database" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")
  items=$(pg_restore --list "$handoff/$name" | grep -c '^[0-9]' || true)
  report="$work/pg_restore.log" label="pg_restore of database $(shown "$database")" started=$SECONDS
  start_progress restore_progress "$label" "$report" "$items" "$started"
  if [[ "$exists" == 1 ]]; then
    # initdb made it (postgres): pg_dump keeps a database's settings, its role-in-database
    # settings, comment and grants for --create only, so it is made again from the archive.
    psql -X -q -v ON_ERROR_STOP=1 -v db="$database" --dbname=template1 <<<'DROP DATABASE :"db"' >/dev/null \
      || die "dropping the new instance's own database $(shown "$database") to restore it failed"
  fi
  log "restoring database $(shown "$database") (${items} archive items)"
  # --create takes the name from the archive (quoted as an identifier) and reconnects by it
  # as a plain name, never parsed as a connection string.
  interruptible pg_restore --verbose --exit-on-error --no-tablespaces --jobs="${RESTORE_JOBS:-2}" --create --dbname=template1 \
    "$handoff/$name" 2>"$report" || restore_failed "$report" "$database"
  stop_progress
  # pg_restore --exit-on-error exited 0: it did every item of the archive
  log "$label done: $items of $items archive items restored in $((SECONDS - started))s"
done

handed_over all-verified
log "analyzing"
interruptible vacuumdb --all --analyze-only --quiet --jobs="${RESTORE_JOBS:-2}" || die "analyze failed"
# The instance's Secret is what clients will use. Only its SCRAM verifier reaches this role, set
# once the image's code has run (a literal on stdin, never on a command line), whatever the image said.
printf 'ALTER ROLE "%s" PASSWORD '"'"'%s'"'"';\n' "${POSTGRES_USER//\"/\"\"}" "$verifier" \
  | psql -X -q -v ON_ERROR_STOP=1 >/dev/null || die "setting the password of ${POSTGRES_USER} failed"
pg_ctl -D "$pgdata" stop -m fast -w >/dev/null || die "temporary server did not stop cleanly"
log "restore complete into $pgdata"
