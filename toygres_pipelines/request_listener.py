"""The request listener's process (toygres_pipelines/requests/listener.py): CMS requests launched
through the webserver the moment they are committed; the request sensors remain the sweep.

    python -m toygres_pipelines.request_listener

Runs beside the daemon and the webserver (make dev starts it; on Kubernetes the Deployment
deploy/kubernetes/request-listener.yaml, the user-code image). It reads what the code location
reads: TOYGRES_CMS_DSN, the platform's settings (the rules a request is checked against) and the
TOYGRES_* settings; and TOYGRES_DAGSTER_URL, the webserver it launches runs through. It needs no
encryption key and no blob credential: it never reads a password or a blob. Its log goes to
stderr; no value it logs is a secret (reasons name fields and values of requests, never the DSN).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from records import ValidationFailed
from resources.cms import CMSResource
from resources.cms.resource import CMS_DSN_ENV, checked_dsn
from toygres_pipelines.requests.listener import RequestListener
from toygres_pipelines.resources_from_env import platform_from_env
from toygres_pipelines.settings import Settings
from toygres_pipelines.shared.webserver import DAGSTER_URL_ENV, DEFAULT_DAGSTER_URL, Webserver, checked_dagster_url

# What the listener is not given of the code location's environment (make dev leaves them out, the
# Kubernetes Deployment blanks them): it never reads a password or a blob.
NOT_FOR_THE_LISTENER = ("TOYGRES_ENCRYPTION_KEY", "TOYGRES_BLOB_CONNECTION_STRING", "TOYGRES_BLOB_ACCOUNT_URL")


def webserver_url() -> str:
    return checked_dagster_url(DAGSTER_URL_ENV, os.environ.get(DAGSTER_URL_ENV, "").strip() or DEFAULT_DAGSTER_URL)


def listener_from_env(url: str) -> RequestListener:
    dsn = os.environ.get(CMS_DSN_ENV, "").strip()
    if not dsn:
        raise ValidationFailed(CMS_DSN_ENV, "must be set: the CMS the requests are in")
    return RequestListener(
        cms=CMSResource(dsn=checked_dsn(CMS_DSN_ENV, dsn), encryption_key=""),
        platform=platform_from_env(),
        webserver=Webserver(url),
        settings=Settings.from_env(),
    )


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _stop)
    log = logging.getLogger("toygres.request_listener")
    try:
        url = webserver_url()
        listener = listener_from_env(url)
    except (ValidationFailed, ValueError) as error:
        log.error("not started: %s", error)
        return 2
    log.info("listening for CMS requests; launching through %s", url)
    try:
        listener.serve()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
