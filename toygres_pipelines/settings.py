"""Every domain's settings composed once: `definitions.py` reads them from the environment when
the code location loads and hands them to each domain's definitions (the CLI reads them too)."""

from toygres_pipelines.drills.settings import DrillsSettings
from toygres_pipelines.fleet.settings import FleetSettings
from toygres_pipelines.images.settings import ImagesSettings
from toygres_pipelines.lifecycle.settings import LifecycleSettings
from toygres_pipelines.pitr.settings import PitrSettings
from toygres_pipelines.requests.settings import RequestsSettings


class Settings(ImagesSettings, DrillsSettings, FleetSettings, LifecycleSettings, PitrSettings, RequestsSettings):
    """All of them; a domain's definitions take the composed settings as its own class."""
