"""The tags runs carry (and the one an instance row carries), declared once: the run coordinator,
the pools (deploy/), the write-back and the UI's filters read them by these names."""

KIND_TAG = "toygres/kind"  # what a run does: one of the kinds below
INSTANCE_TAG = "toygres/instance"  # the k8s_name of the instance a run backs up, restores or drills
REQUEST_ID_TAG = "toygres/request-id"  # the CMS request a run was launched for
# A readable run name (Dagster 1.13 runs have no name field): "backup orders__nightly-20260101", ...
WHAT_TAG = "toygres/what"
AFTER_RUN_TAG = "toygres/after-run"  # the run whose success launched a fleet check

BACKUP_KIND = "backup"
RESTORE_KIND = "restore"
DRILL_KIND = "drill"
CHECKS_KIND = "checks"  # the fleet's freshness checks, however launched
MAINTENANCE_KIND = "maintenance"

# The key of an instance row's tag (CMS, not Dagster) that names the request that made it.
REQUEST_KEY = "request_key"
