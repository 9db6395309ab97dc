"""`toygres-pipelines`: queue backups and restores in the CMS, list what the CMS holds.

The request commands apply the very rules the launchpad and the request sensors apply
(`validate_image_name` + `running_source` for backups, `check_request_fields` + `plan_restore`
for restores), then insert a `pending` row; the request sensors turn pending rows into runs.

Exit codes: 0 success, 2 invalid request or usage (`error: <field>: <rule>` on stderr),
3 CMS not configured / unreachable / not migrated, 1 anything else. No password (of the CMS
DSN or of an instance) is ever printed.

One module per command group (requests, images, instances, lifecycle, status, pitr, cms_access),
each adding its subcommands to the parser `entry` builds; `output` prints, `redaction` keeps
secrets in. The request commands' options are generated from the request records
(`toygres_pipelines.forms`).
"""

from toygres_pipelines.cli.cms_access import DSN_ENV, KEY_ENV
from toygres_pipelines.cli.entry import build_parser, main

__all__ = ["DSN_ENV", "KEY_ENV", "build_parser", "main"]
