"""Everything the requests domain defines; `toygres_pipelines/definitions.py` merges it in.

It settles the rows of several domains (requests, images, instances) when a run ends; no other
domain imports it."""

import dagster as dg

from toygres_pipelines.requests.reconcile import reconcile_sensor
from toygres_pipelines.requests.settings import RequestsSettings
from toygres_pipelines.requests.writeback import writeback_sensors


def requests_definitions(settings: RequestsSettings) -> dg.Definitions:
    """The run-status write-back sensors and reconcile_stuck_rows."""
    return dg.Definitions(sensors=[*writeback_sensors(settings), reconcile_sensor(settings)])
