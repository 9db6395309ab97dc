import warnings

import dagster as dg

from toygres_pipelines.domains import domain_definitions
from toygres_pipelines.resources_from_env import resources_from_env
from toygres_pipelines.settings import Settings

# Dagster's own Definitions code copies every sensor that targets a job through a beta-flagged
# parameter (`owners`, which we never set) and warns once per sensor and load: not ours to fix.
warnings.filterwarnings(
    "ignore", message=r"Parameter `owners` of initializer `SensorDefinition.__init__`", category=dg.BetaWarning
)

# Partitioned asset checks (`restorable` on the image partition) are a preview feature of 1.13.
warnings.filterwarnings(
    "ignore", message=r"Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

# Each domain owns its definitions (toygres_pipelines/<domain>/definitions.py, domains.py); they
# are composed here with the shared resources and executor, from settings read once at load.
defs = dg.Definitions.merge(
    domain_definitions(Settings.from_env()),
    dg.Definitions(
        resources=resources_from_env(),
        # Every job (the UI's Materialize of `image` included) runs its steps in its run worker: one
        # process per run, not one more per step (docs/benchmarks.md, orchestration overhead).
        executor=dg.in_process_executor,
    ),
)
