"""`python -m pretrained` runs the command line (see pretrained.cli)."""

import sys

from .cli import main

sys.exit(main())
