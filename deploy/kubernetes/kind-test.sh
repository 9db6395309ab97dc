#!/usr/bin/env bash
# One command: the Kubernetes tests against a real (kind) cluster.
#   deploy/kubernetes/kind-test.sh            # creates cluster "toygres" if needed, builds + loads the job image
# Against AKS (or any cluster) instead:
#   TOYGRES_K8S_CONTEXT=<context> TOYGRES_K8S_JOB_IMAGES=17=<registry>/toygres-job@sha256:<digest> \
#     .venv/bin/python -m pytest tests/kubernetes -m kubernetes
# Needs: docker, kind, kubectl. Optional: TOYGRES_K8S_BLOB_URL + TOYGRES_K8S_BLOB_SAS (a writable
# blob folder) to run the backup to completion instead of to its expected upload failure.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
cluster=${KIND_CLUSTER:-toygres}
# A unique tag per commit: the platform refuses reused tags such as :17 (docs/kubernetes.md).
image=${TOYGRES_KIND_JOB_IMAGE:-toygres-job:17-kind-$(git rev-parse --short=12 HEAD)}
namespace=${TOYGRES_K8S_NAMESPACE:-toygres-test}

kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s
# The job image's base, pinned by digest as build.sh does (the servers run the same build).
docker pull postgres:17-bookworm >/dev/null
base=$(docker inspect --format '{{index .RepoDigests 0}}' postgres:17-bookworm)
docker build --build-arg "BASE_IMAGE=$base" -t "$image" deploy/kubernetes/job-image
kind load docker-image "$image" --name "$cluster"
kubectl --context "kind-$cluster" get namespace "$namespace" >/dev/null 2>&1 \
  || kubectl --context "kind-$cluster" create namespace "$namespace"

TOYGRES_K8S_CONTEXT="kind-$cluster" TOYGRES_K8S_JOB_IMAGES="17=$image" TOYGRES_K8S_NAMESPACE="$namespace" \
  exec .venv/bin/python -m pytest tests/kubernetes -m kubernetes -v "$@"
