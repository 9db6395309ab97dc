"""`python -m toygres_pipelines ...`: the `toygres-pipelines` CLI."""

import sys

from toygres_pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main())
