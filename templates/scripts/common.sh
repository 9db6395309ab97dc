# Shared by backup.sh and restore.sh; sourced, never run. Both platforms run these files
# unchanged: Kubernetes mounts them from a ConfigMap, the local platform copies them into the
# job's directory.
#
# Secrets arrive by reference, never as literals in the job spec (records/job_scripts.py declares
# every variable of each script and who supplies it):
#   PGPASSWORD          (Kubernetes: secretKeyRef)   or POSTGRES_PASSWORD_FILE (local: 0600 file)
#   AZCOPY_SAS_FILE     the job's blob grant (local: a 0600 file; Kubernetes: the per-job Secret
#                       mounted as a file): JSON from resources/blob_sas.py holding one blob-level
#                       SAS per name the job may touch (docs/security.md). blob_url picks the one of
#                       the name it is given. No job holds the deployment's identity: never
#                       `azcopy login`, never `--identity`, no AZCOPY_AUTO_LOGIN_TYPE.
#
# Exit code 3 means "checksum mismatch" and nothing else: the Kubernetes Jobs' podFailurePolicy
# fails the Job at once on it (no retry can fix wrong bytes). Use another code for anything else.

set -Eeuo pipefail
umask 077

# A termination signal ends the job through `exit`, so its EXIT trap (the cleanup) runs first:
# without a trap bash would die at once and leave a temporary server and directories behind.
trap 'log "terminated (SIGTERM): cleaning up"; exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

# A long step runs in the background and is waited for, so that a signal sent to this shell
# alone (Kubernetes signals only the container's PID 1) is handled at once, not when it ends.
interruptible() { "$@" & wait "$!"; }

# For an EXIT trap: stop background steps still running, then wait for them to be gone.
stop_background_steps() {
  local pids
  pids=$(jobs -pr)
  [[ -z "$pids" ]] && return 0
  kill $pids 2>/dev/null || true
  wait $pids 2>/dev/null || true
}

log() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${TOYGRES_JOB:-job}" "$*"; }
die() { log "ERROR: $*"; exit "${2:-1}"; }

# Anything an external tool prints goes through here: a SAS signature never reaches a log, neither
# in a URL's query nor as the grant file's JSON (its signatures, its container token).
redact() {
  sed -u -E -e 's/(sig|se|sp|sv|st|spr|srt|ss|sr|skoid|sktid|skt|ske|sks|skv|saoid|suoid|scid)=[^&[:space:]"]*/\1=REDACTED/g' \
    -e 's/("signatures"[[:space:]]*:[[:space:]]*\{)[^}]*/\1"REDACTED":""/g' -e 's/("container"[[:space:]]*:[[:space:]]*")[^"]*/\1REDACTED/g'
}

load_secrets() {
  if [[ -n "${POSTGRES_PASSWORD_FILE:-}" ]]; then
    # Byte-exact: $(<file) would drop the trailing newlines a password may end in.
    [[ -r "$POSTGRES_PASSWORD_FILE" ]] || die "POSTGRES_PASSWORD_FILE ${POSTGRES_PASSWORD_FILE} is not readable"
    IFS= read -r -d '' PGPASSWORD <"$POSTGRES_PASSWORD_FILE" || true
    export PGPASSWORD
  fi
  [[ -n "${AZCOPY_SAS_FILE:-}" ]] || die "no blob grant given (AZCOPY_SAS_FILE): no way to reach blob storage"
  [[ -r "$AZCOPY_SAS_FILE" ]] || die "AZCOPY_SAS_FILE ${AZCOPY_SAS_FILE} is not readable"
  load_grant || die "AZCOPY_SAS_FILE ${AZCOPY_SAS_FILE} is not a blob grant (format 1)"
}

# The grant, read once (a restore of thousands of files looks a name up for each): the shared
# parameters, each name's signature, a parallel-mode backup's container token. Never exported.
declare -A GRANT_SIGNATURES=()
GRANT_QUERY="" GRANT_CONTAINER=""
load_grant() {
  local entries i
  jq -e '.format == 1 and (.query | type == "string") and (.signatures | type == "object")' "$AZCOPY_SAS_FILE" \
    >/dev/null 2>&1 || return 1
  GRANT_QUERY=$(jq -r '.query' "$AZCOPY_SAS_FILE") || return 1
  GRANT_CONTAINER=$(jq -r '.container // empty' "$AZCOPY_SAS_FILE") || return 1
  mapfile -d '' -t entries < <(jq -j '.signatures | to_entries[] | .key, "\u0000", .value, "\u0000"' "$AZCOPY_SAS_FILE")
  for ((i = 0; i + 1 < ${#entries[@]}; i += 2)); do GRANT_SIGNATURES[${entries[i]}]=${entries[i + 1]}; done
}

# blob_url NAME: NAME (relative to BLOB_URL) with the grant's SAS for it: NAME's own blob-level SAS,
# else the container SAS of a parallel-mode backup's grant. Fails when the grant opens no such name.
blob_url() {
  local token
  [[ -n "$1" && "/$1/" != *"/../"* && "/$1/" != *"/./"* && "$1" != /* ]] || return 1
  if [[ -n "${GRANT_SIGNATURES[$1]+set}" ]]; then
    token="${GRANT_QUERY}&sig=${GRANT_SIGNATURES[$1]}"
  elif [[ -n "$GRANT_CONTAINER" ]]; then
    token=$GRANT_CONTAINER
  else
    return 1
  fi
  printf '%s?%s' "${BLOB_URL%/}/$1" "$token"
}

# --- transfers under a stall watchdog ----------------------------------------------------------
# azcopy waits on a frozen blob storage for as long as the job may run. A transfer fails instead
# after TRANSFER_STALL_SECONDS (default 180) without progress: neither a downloaded file growing
# nor blob storage answering a probe. (An upload has no outside measure of its bytes
# on the wire: azcopy buffers its input. A source that is merely slow, pg_dump waiting on a
# lock, leaves blob storage answering the probe, so it never counts as a stall.)
STALL_MESSAGE="blob storage unreachable"

# The probe carries no credential: any HTTP answer (403 and 404 included) shows blob storage is
# there, so it needs no permission a job lacks (a restore cannot list, a backup cannot read).
probe_blob_storage() { # $1: seconds to wait for an answer
  timeout -k 2 "$1" curl --silent --head --output /dev/null --max-time "$1" "${BLOB_URL%/}/" >/dev/null 2>&1
}

file_size() { stat -c %s "$1" 2>/dev/null || true; }

watch_transfer() { # $1: azcopy's pid, $2: a file to create when it stalled, $3: a file it writes (optional)
  local pid=$1 marker=$2 output=${3:-} stall=${TRANSFER_STALL_SECONDS:-180} sleeper=""
  local interval=$((stall / 6)) last_progress=$SECONDS last_written="" written
  ((interval >= 1)) || interval=1
  trap '[[ -n "$sleeper" ]] && kill "$sleeper" 2>/dev/null; exit 0' TERM
  # The timer and the probe get no stdout/stderr: left behind by a watchdog stopped at the wrong
  # moment, they would hold the job's log pipe open (the job looks alive until they end).
  while kill -0 "$pid" 2>/dev/null; do
    sleep "$interval" >/dev/null 2>&1 &
    sleeper=$!
    wait "$sleeper" || true
    written=${output:+$(file_size "$output")}
    if [[ -n "$written" && "$written" != "$last_written" ]]; then
      last_written=$written last_progress=$SECONDS
    elif probe_blob_storage "$interval" >/dev/null 2>&1 & sleeper=$! && wait "$sleeper"; then
      last_progress=$SECONDS
    elif ((SECONDS - last_progress >= stall)); then
      : >"$marker"
      log "ERROR: ${STALL_MESSAGE}: no transfer progress for ${stall}s, stopping azcopy"
      kill "$pid" 2>/dev/null || true
      sleep 2
      kill -KILL "$pid" 2>/dev/null || true
      return 0
    fi
  done
}

# azcopy_watched STDOUT STDERR ARGS...: azcopy (reading this shell's stdin) under the watchdog;
# STDOUT growing counts as progress when it is the downloaded file.
# It runs in the background, so a SIGTERM to the job is handled at once.
azcopy_watched() {
  local stdout=$1 stderr=$2 marker pid watchdog status=0 progress=""
  shift 2
  if [[ " $* " == *" --from-to=BlobPipe "* ]]; then progress=$stdout; fi
  marker=$(mktemp -u "${TMPDIR:-/tmp}/toygres-stalled.XXXXXX")
  azcopy "$@" <&0 >"$stdout" 2>"$stderr" &
  pid=$!
  watch_transfer "$pid" "$marker" "$progress" &
  watchdog=$!
  wait "$pid" || status=$?
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  if [[ -e "$marker" ]]; then
    rm -f "$marker"
    return 124
  fi
  return "$status"
}

# A piped upload holds up to AZCOPY_CONCURRENCY_VALUE blocks of the stream in memory (azcopy's
# default: 5 of 8 MiB, so its memory grew with the stream up to 40 MiB more): two, one uploading while
# the next is read, of 4 MiB, or more for a stream that 50,000 blocks (Azure's limit per blob) of
# 4 MiB could not hold 4 times over; without a size hint, azcopy's own 8 MiB (globals, small files,
# a base backup's tar). So the job's memory is the same for 10 MiB and for a 40 GiB database.
UPLOAD_BLOCKS_IN_FLIGHT=2
upload_block_mib() { # $1: the stream's expected size in bytes (a database's on disk), or empty
  local block=4
  [[ -n "${1:-}" ]] || { echo 8; return 0; }
  while ((block < 4000 && block * 1048576 * 50000 < 4 * $1)); do block=$((block * 2)); done
  echo $((block < 4000 ? block : 4000))
}

upload_stdin() { # $1: blob name, $2: expected bytes (optional); stdin: the bytes (a pipe: azcopy refuses a redirected file)
  local output url block status=0
  [[ -z "${2:-}" || "$2" =~ ^[0-9]+$ ]] || { log "ERROR: upload of $(shown "$1"): size hint $(shown "$2") is not a byte count"; return 1; }
  url=$(blob_url "$1") || { log "ERROR: this job's blob grant opens no $(shown "$1")"; return 1; }
  block=$(upload_block_mib "${2:-}")
  output=$(mktemp "${TMPDIR:-/tmp}/toygres-azcopy.XXXXXX")
  AZCOPY_CONCURRENCY_VALUE=$UPLOAD_BLOCKS_IN_FLIGHT azcopy_watched "$output" "$output.err" copy "$url" --from-to=PipeBlob \
    --block-size-mb="$block" --log-level=ERROR --output-level=essential || status=$?
  if ((status == 124)); then
    log "ERROR: ${STALL_MESSAGE} while uploading $1"
  elif ((status != 0)); then
    # azcopy's summary is noise on success; on failure its last (redacted) lines go to the log.
    cat "$output" "$output.err" | redact | tail -n 30 >&2
  fi
  rm -f "$output" "$output.err"
  return "$status"
}

download_file() { # $1: blob name, $2: local path (BlobPipe: much faster start than BlobLocal)
  local url status=0
  url=$(blob_url "$1") || { log "ERROR: this job's blob grant opens no $(shown "$1")"; return 1; }
  azcopy_watched "$2" /dev/null copy "$url" --from-to=BlobPipe --log-level=ERROR --output-level=quiet \
    </dev/null || status=$?
  if ((status == 124)); then
    log "ERROR: ${STALL_MESSAGE} while downloading $1"
  elif ((status != 0)); then
    # BlobPipe prints nothing on failure; its reason is in the newest azcopy log.
    local newest
    newest=$(ls -t "${AZCOPY_LOG_LOCATION:-$HOME/.azcopy}"/*.log 2>/dev/null | grep -v scanning | head -1 || true)
    [[ -n "$newest" ]] && grep -E 'ERR|error|Error|RESPONSE' "$newest" | redact | tail -n 10 >&2
  fi
  return "$status"
}

# The options of every session a job opens on a tenant's server (PGOPTIONS). The tenant owns its
# roles' and databases' settings (ALTER ROLE/DATABASE ... SET, carried by its images too), and they
# apply to every session that logs in; options given at connection win over them: its schemas ahead
# of pg_catalog, a role its sessions switch to (SET role: the session would run as that role, not
# the superuser that logged in), a DateStyle other than ISO, a read-only default, short timeouts, no
# temporary file allowed (a restore's CREATE INDEX sorts on disk), a damaged page read as empty
# (zero_damaged_pages, ignore_checksum_failure: a backup without its rows), libraries loaded into each session, statements logged. records/tenant_sessions.py holds the same
# for the deployment's Python sessions.
TENANT_SESSION_OPTIONS="-c search_path=pg_catalog -c role=none -c DateStyle=ISO -c default_transaction_read_only=off -c statement_timeout=0 \
-c lock_timeout=0 -c idle_in_transaction_session_timeout=0 -c idle_session_timeout=0 -c temp_file_limit=-1 \
-c zero_damaged_pages=off -c ignore_checksum_failure=off -c session_preload_libraries= \
-c local_preload_libraries= -c log_statement=none -c log_min_duration_statement=-1 -c default_tablespace= \
-c temp_tablespaces="
# Added for the jobs' own catalogue queries, not for the dumps: a name's bytes as they are (the bytes
# pg_dump connects by), where another client encoding would convert them. A dump keeps its database's
# encoding, so that a restore into another one converts.
NAMES_AS_BYTES="-c client_encoding=SQL_ASCII"

# A database name as a libpq connection string that can only mean that name: a bare name
# holding `=` or starting with postgresql:// would be parsed as a whole connection string.
dbname_conninfo() {
  local name=${1//\\/\\\\}
  name=${name//\'/\\\'}
  printf "dbname='%s'" "$name"
}

# A name as it may appear in a log line: control characters escaped, one line whatever it holds.
shown() { printf '%q' "$1"; }

# --- progress ---------------------------------------------------------------------------------
# A long step logs where it is every PROGRESS_SECONDS (default 5): start_progress runs a reporter
# in the background, stop_progress ends it (the EXIT trap's stop_background_steps does too).
PROGRESS_SECONDS=${PROGRESS_SECONDS:-5}
PROGRESS_PID=""

mib() { awk -v b="${1:-0}" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
rate() { awk -v b="${1:-0}" -v s="${2:-0}" 'BEGIN { printf "%.1f MiB/s", (s > 0 ? b / s : b) / 1048576 }'; }
percent() { awk -v d="${1:-0}" -v t="${2:-0}" 'BEGIN { printf "%d%%", (t > 0 ? 100 * d / t : 100) }'; }

start_progress() { # REPORTER ARGS...: run REPORTER (it logs one line) every PROGRESS_SECONDS
  (
    sleeper=""
    trap '[[ -n "$sleeper" ]] && kill "$sleeper" 2>/dev/null; exit 0' TERM
    while :; do
      sleep "$PROGRESS_SECONDS" &
      sleeper=$!
      wait "$sleeper" || true
      "$@" || true
    done
  ) &
  PROGRESS_PID=$!
}

stop_progress() {
  [[ -n "$PROGRESS_PID" ]] || return 0
  kill "$PROGRESS_PID" 2>/dev/null || true
  wait "$PROGRESS_PID" 2>/dev/null || true
  PROGRESS_PID=""
}

# The bytes a stream has passed so far, from its count file ($1: backup.sh's stream_digest.py
# rewrites it whole every second); empty before its first.
bytes_counted() { cat "$1" 2>/dev/null || true; }

# --------------------------------------------------------------------------------------------
# The two roles of a restore (restore.sh / restore-pitr.sh fetch, restore*-serve.sh serve)

# begin_fetch_role: $handoff and the fetch role's staging area inside it ($staging, emptied);
# its EXIT trap tells the serve role when this role failed and always removes the staging area.
begin_fetch_role() {
  handoff="$RESTORE_HANDOFF"
  staging="$handoff/.fetch"
  trap end_fetch_role EXIT
  rm -rf "$staging"
}
end_fetch_role() {
  local status=$?
  stop_background_steps
  if ((status != 0)); then printf 'the fetch role failed (exit %s)\n' "$status" >"$handoff/failed" 2>/dev/null || true; fi
  rm -rf "$staging"
}

# handed_over KEY (serve role): wait until the fetch role announces KEY; stop when it failed.
handed_over() {
  while [[ ! -e "$RESTORE_HANDOFF/ready/$1" ]]; do
    if [[ -e "$RESTORE_HANDOFF/failed" ]]; then die "the fetch role failed: nothing more is handed over"; fi
    sleep 0.1
  done
}

# read_verifier: the instance password's SCRAM-SHA-256 verifier ($verifier), the only form of it
# the serve role ever holds.
read_verifier() {
  verifier=$(<"$POSTGRES_PASSWORD_VERIFIER_FILE")
  [[ "$verifier" =~ ^SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$ ]] \
    || die "POSTGRES_PASSWORD_VERIFIER_FILE holds no SCRAM-SHA-256 verifier"
}

# socket_tmpdir PREFIX: a new private directory for a server's Unix socket (paths are limited to
# ~107 bytes: a long TMPDIR falls back to /tmp).
socket_tmpdir() {
  local tmp_root=${TMPDIR:-/tmp}
  ((${#tmp_root} <= 60)) || tmp_root=/tmp
  mktemp -d "$tmp_root/$1.XXXXXX"
}
