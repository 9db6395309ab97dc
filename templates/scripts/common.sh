# Shared by backup.sh and restore.sh; sourced, never run. Both platforms run these files
# unchanged: Kubernetes mounts them from a ConfigMap, the local platform copies them into the
# job's directory.
#
# Secrets arrive by reference, never as literals in the job spec:
#   PGPASSWORD          (Kubernetes: secretKeyRef)   or POSTGRES_PASSWORD_FILE (local: 0600 file)
#   AZCOPY_SAS          (Kubernetes: secretKeyRef)   or AZCOPY_SAS_FILE        (local: 0600 file)
#   neither SAS form    -> AZCOPY_AUTO_LOGIN_TYPE=WORKLOAD (Kubernetes: set in the Job env): azcopy
#                          authenticates each command with the pod's workload identity and keeps no
#                          token. Never `azcopy login`: it stores its token in the kernel keyring,
#                          which RuntimeDefault seccomp forbids. Never `--identity` either.
#
# Exit code 3 means "checksum mismatch" and nothing else: the Kubernetes Jobs' podFailurePolicy
# fails the Job at once on it (no retry can fix wrong bytes). Use another code for anything else.

set -Eeuo pipefail
umask 077

log() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${TOYGRES_JOB:-job}" "$*"; }
die() { log "ERROR: $*"; exit "${2:-1}"; }

# Anything an external tool prints goes through here: a SAS signature never reaches a log.
redact() { sed -u -E 's/(sig|se|sp|sv|st|spr|srt|ss|sr|skoid|sktid|skt|ske|sks|skv|saoid|suoid|scid)=[^&[:space:]"]*/\1=REDACTED/g'; }

load_secrets() {
  if [[ -n "${POSTGRES_PASSWORD_FILE:-}" ]]; then
    PGPASSWORD="$(<"$POSTGRES_PASSWORD_FILE")"
    export PGPASSWORD
  fi
  if [[ -n "${AZCOPY_SAS_FILE:-}" ]]; then
    AZCOPY_SAS="$(<"$AZCOPY_SAS_FILE")"
  fi
  AZCOPY_SAS="${AZCOPY_SAS:-}"
  AZCOPY_SAS="${AZCOPY_SAS#\?}"
  if [[ -z "$AZCOPY_SAS" ]]; then
    [[ "${AZCOPY_AUTO_LOGIN_TYPE:-}" == WORKLOAD ]] \
      || die "no SAS given and AZCOPY_AUTO_LOGIN_TYPE is not WORKLOAD: no way to reach blob storage"
    export AZCOPY_AUTO_LOGIN_TYPE
    log "no SAS given: azcopy uses the pod's workload identity (AZCOPY_AUTO_LOGIN_TYPE=WORKLOAD)"
  fi
}

blob_url() { # $1: blob name relative to BLOB_URL
  local url="${BLOB_URL%/}/$1"
  if [[ -n "$AZCOPY_SAS" ]]; then url+="?$AZCOPY_SAS"; fi
  printf '%s' "$url"
}

# azcopy's summary is noise on success; on failure its last (redacted) lines go to the log.
azcopy_quietly() {
  local output status=0
  output=$(azcopy "$@" --log-level=ERROR --output-level=essential 2>&1) || status=$?
  if ((status != 0)); then printf '%s\n' "$output" | redact | tail -n 30 >&2; fi
  return "$status"
}

upload_stdin() { # $1: blob name; stdin: the bytes (a pipe: azcopy refuses a redirected file)
  azcopy_quietly copy "$(blob_url "$1")" --from-to=PipeBlob
}

download_file() { # $1: blob name, $2: local path (BlobPipe: much faster start than BlobLocal)
  local status=0
  azcopy copy "$(blob_url "$1")" --from-to=BlobPipe --log-level=ERROR --output-level=quiet >"$2" 2>/dev/null || status=$?
  if ((status != 0)); then
    # BlobPipe prints nothing on failure; its reason is in the newest azcopy log.
    local newest
    newest=$(ls -t "${AZCOPY_LOG_LOCATION:-$HOME/.azcopy}"/*.log 2>/dev/null | grep -v scanning | head -1 || true)
    [[ -n "$newest" ]] && grep -E 'ERR|error|Error|RESPONSE' "$newest" | redact | tail -n 10 >&2
  fi
  return "$status"
}

json_string() { # minimal JSON string escaping for names and versions
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}
