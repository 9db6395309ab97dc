#!/usr/bin/env bash
# Build and push one job image per supported PostgreSQL major, each under a unique tag
# (<major>-<UTC date>-<git commit>), and print the TOYGRES_K8S_JOB_IMAGES value that pins them
# by digest:
#   deploy/kubernetes/job-image/build.sh <registry>/toygres-job      # needs docker (buildx) and a login
#   deploy/kubernetes/job-image/build.sh --list-majors               # the majors it builds
# The majors are those KubernetesPlatform.postgres_images serves (resources/platform/kubernetes.py).
set -Eeuo pipefail
MAJORS=(14 15 16 17)

if [[ "${1:-}" == --list-majors ]]; then printf '%s\n' "${MAJORS[@]}"; exit 0; fi
repository=${1:?usage: build.sh <registry>/<repository> | --list-majors}
here=$(cd "$(dirname "$0")" && pwd)
stamp="$(date -u +%Y%m%d)-$(git -C "$here" rev-parse --short=12 HEAD)"
pins=()
for major in "${MAJORS[@]}"; do
  tag="$repository:$major-$stamp"
  docker build --pull --build-arg "PG_MAJOR=$major" -t "$tag" "$here" >&2
  docker push "$tag" >&2
  digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$tag")   # <repository>@sha256:...
  pins+=("$major=$digest")
done
(IFS=,; echo "TOYGRES_K8S_JOB_IMAGES=${pins[*]}")
