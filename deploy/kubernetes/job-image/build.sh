#!/usr/bin/env bash
# Build and push one job image per supported PostgreSQL major, each under a unique tag
# (<major>-<UTC date>-<git commit>) and FROM postgres:<major>-bookworm resolved to its digest, and
# print the TOYGRES_K8S_JOB_IMAGES value that pins them by digest (the servers run the same builds;
# TOYGRES_K8S_POSTGRES_IMAGES, printed too, pins the same digests for a deployment that sets it):
#   deploy/kubernetes/job-image/build.sh <registry>/toygres-job      # needs docker (buildx) and a login
#   deploy/kubernetes/job-image/build.sh --list-majors               # the majors it builds
# The majors are resources/platform/k8s_settings.py SUPPORTED_MAJORS.
set -Eeuo pipefail
MAJORS=(14 15 16 17)

if [[ "${1:-}" == --list-majors ]]; then printf '%s\n' "${MAJORS[@]}"; exit 0; fi
repository=${1:?usage: build.sh <registry>/<repository> | --list-majors}
here=$(cd "$(dirname "$0")" && pwd)
stamp="$(date -u +%Y%m%d)-$(git -C "$here" rev-parse --short=12 HEAD)"
pins=()
for major in "${MAJORS[@]}"; do
  tag="$repository:$major-$stamp"
  docker pull "postgres:$major-bookworm" >&2
  base=$(docker inspect --format '{{index .RepoDigests 0}}' "postgres:$major-bookworm")   # postgres@sha256:...
  docker build --pull=false --build-arg "BASE_IMAGE=$base" -t "$tag" "$here" >&2
  docker push "$tag" >&2
  digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$tag")   # <repository>@sha256:...
  pins+=("$major=$digest")
done
(IFS=,; echo "TOYGRES_K8S_JOB_IMAGES=${pins[*]}")
(IFS=,; echo "TOYGRES_K8S_POSTGRES_IMAGES=${pins[*]}")   # optional: the default already runs these builds
