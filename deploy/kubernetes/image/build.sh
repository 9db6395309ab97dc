#!/usr/bin/env bash
# Build and push the project image (deploy/kubernetes/image/Dockerfile) under a unique tag, from a
# base pinned by digest, and print the image settings for deploy/kubernetes/dagster-values.yaml:
#   deploy/kubernetes/image/build.sh <registry>/toygres-pipelines   # needs docker (buildx) and a login
# Never reuse a tag: the values pull with IfNotPresent, so a node would keep running its cached build.
set -Eeuo pipefail
PYTHON_BASE_TAG=python:3.11-slim-bookworm

repository=${1:?usage: build.sh <registry>/<repository>}
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$checkout/pyproject.toml")
tag="$version-$(date -u +%Y%m%d%H%M%S)-$(git -C "$checkout" rev-parse --short=12 HEAD)"
docker pull "$PYTHON_BASE_TAG" >&2
base=$(docker inspect --format '{{index .RepoDigests 0}}' "$PYTHON_BASE_TAG")   # python@sha256:...
docker build --build-arg "PYTHON_BASE=$base" -f "$here/Dockerfile" -t "$repository:$tag" "$checkout" >&2
docker push "$repository:$tag" >&2
digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$repository:$tag")
echo "image: repository=$repository tag=$tag (digest $digest); set it on dagsterWebserver, dagsterDaemon,"
echo "dagster-user-deployments.deployments[0] (the run pods use the user deployment's image)"
