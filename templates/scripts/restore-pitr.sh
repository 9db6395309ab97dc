#!/usr/bin/env bash
# Point-in-time restore job (docs/pitr.md): a base backup and the archived WAL after it become a
# data directory on the volume, replayed to RESTORE_PLAN's target_time (or to the end of the
# archive: `latest`) and promoted. Every segment the plan names is downloaded, decrypted,
# decompressed and checked against its sha256 (exit 3 on a mismatch) before it is handed over, so
# the temporary server's restore_command reads only verified segments and holds no credential.
#
# This is the fetch role (resources/platform/base.py RestoreRoles): it holds the grant and the age
# identity, runs nothing of the tenant's, and hands the verified plaintext (the base backup's
# zstd-compressed tar, the WAL segments, the target) to the serve role, restore-pitr-serve.sh, which replays it as another OS
# user / container holding none of them (docs/security.md).
#
# Environment: records/job_scripts.py PitrRestoreFetchEnv (every variable, who supplies it, what it means).
#
# The handoff, in this order: data/segments (the plan's segment names, one a line: all the serve
# role's restore_command may wait for) and data/target (empty: the end of the archive), then
# ready/plan; data/base.tar.zst then ready/base (the serve role extracts it and starts replaying);
# data/wal/<segment>, each as soon as it is verified (a rename: never seen half-written), while
# the server replays; ready/all-verified once every planned one is (the server promotes only
# after it); $RESTORE_HANDOFF/failed when this role failed.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOYGRES_JOB=restore-pitr
: "${RESTORE_HANDOFF:?}" "${BLOB_URL:?}" "${PLAN_BLOB:?}" "${PLAN_SHA256:?}"
load_secrets

# The platform made data/ and ready/ (setgid, the serve role's group); umask 077 keeps the staging
# area closed to it until a file is verified (restore.sh says why there is no chmod of them here).
begin_fetch_role
# (made by the local platform already, setgid; on Kubernetes the volume's fsGroup is the serve role's group)
mkdir -p "$staging" "$handoff/data" "$handoff/ready"

download_file "$PLAN_BLOB" "$staging/plan.json" || die "download of the restore plan failed"
[[ "$(sha256sum <"$staging/plan.json" | cut -d' ' -f1)" == "$PLAN_SHA256" ]] || die "the restore plan is not the one planned" 3

decrypted() { # $1: encrypted (true/false): stdin stored bytes -> stdout decrypted (still zstd)
  if [[ "$1" == true ]]; then
    [[ -n "${AGE_IDENTITY_FILE:-}" ]] || die "the backup is encrypted and this job has no age identity"
    age --decrypt -i "$AGE_IDENTITY_FILE"
  else
    cat
  fi
}

# The segment plan and the target first: the serve role starts its server as soon as the base
# backup is extracted, and its restore_command waits only for names in this list.
jq -r '.segments[].segment' "$staging/plan.json" >"$staging/segments"
while IFS= read -r segment; do
  [[ "$segment" =~ ^[0-9A-F]{24}$ ]] || die "the plan names a segment that is not one: $(shown "$segment")"
done <"$staging/segments"
count=$(wc -l <"$staging/segments")
target=$(jq -r '.target_time // empty' "$staging/plan.json")
# PostgreSQL's own timestamp syntax (it refuses ISO 8601's trailing Z)
if [[ -n "$target" ]]; then target=$(date -u -d "$target" '+%Y-%m-%d %H:%M:%S.%6N+00') || die "target_time unreadable"; fi
printf '%s' "$target" >"$staging/target"
mkdir -m 750 "$staging/wal"
chmod g+r "$staging/segments" "$staging/target"
mv "$staging/segments" "$staging/target" "$staging/wal" "$handoff/data/"
: >"$handoff/ready/.plan" && mv "$handoff/ready/.plan" "$handoff/ready/plan"

base_blob=$(jq -r .base.blob "$staging/plan.json")
log "downloading base backup ${base_blob}"
download_file "$base_blob" "$staging/base" || die "download of the base backup failed"
[[ "$(sha256sum <"$staging/base" | cut -d' ' -f1)" == "$(jq -r .base.sha256 "$staging/plan.json")" ]] \
  || die "base backup ${base_blob}: sha256 mismatch" 3
# Handed over still compressed: the serve role's `zstd -d | tar -x` is the one pass that writes the
# data directory (a decompressed tar here would be written once more and read once more).
if [[ "$(jq -r .base.encrypted "$staging/plan.json")" == true ]]; then
  decrypted true <"$staging/base" >"$staging/base.tar.zst" || die "the base backup does not decrypt"
  rm -f "$staging/base"
else
  mv "$staging/base" "$staging/base.tar.zst"
fi
# The serve role extracts the verified base backup while the segments download.
chmod g+r "$staging/base.tar.zst"
mv "$staging/base.tar.zst" "$handoff/data/"
: >"$handoff/ready/.base" && mv "$handoff/ready/.base" "$handoff/ready/base"

# fetch_segment I: the plan's segment I downloaded, decoded and checked (exit 3 on a mismatch),
# then handed over under its name: the server may read it from that moment on, never before.
fetch_segment() {
  local blob segment sha encrypted
  IFS=$'\t' read -r blob segment sha encrypted < <(jq -r ".segments[$1] | [.blob, .segment, .sha256, .encrypted] | @tsv" "$staging/plan.json")
  download_file "$blob" "$staging/stored.$1" || die "download of WAL ${segment} failed"
  decrypted "$encrypted" <"$staging/stored.$1" | zstd -q -d -c >"$staging/segment.$1" || die "WAL ${segment} does not decode"
  rm -f "$staging/stored.$1"
  [[ "$(sha256sum <"$staging/segment.$1" | cut -d' ' -f1)" == "$sha" ]] || die "WAL ${segment}: sha256 mismatch" 3
  chmod g+r "$staging/segment.$1"
  mv "$staging/segment.$1" "$handoff/data/wal/$segment"
}

# Segments are fetched WAL_FETCH_JOBS at a time (each download mostly waits on blob storage); the
# first failure stops the others and is this role's exit status.
WAL_FETCH_JOBS=4
log "downloading ${count} WAL segment(s), ${WAL_FETCH_JOBS} at a time"
running=0 failed=0
for ((i = 0; i < count && failed == 0; i++)); do
  fetch_segment "$i" &
  running=$((running + 1))
  if ((running >= WAL_FETCH_JOBS)); then
    wait -n || failed=$?
    running=$((running - 1))
  fi
done
while ((failed == 0 && running > 0)); do
  wait -n || failed=$?
  running=$((running - 1))
done
if ((failed != 0)); then
  kill $(jobs -pr) 2>/dev/null || true
  wait 2>/dev/null || true
  exit "$failed"
fi

# Every planned segment verified and handed over: the serve role's server may promote.
: >"$handoff/ready/.all-verified" && mv "$handoff/ready/.all-verified" "$handoff/ready/all-verified"
log "base backup and ${count} WAL segment(s) verified and handed over"
