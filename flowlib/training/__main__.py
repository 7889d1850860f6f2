"""``python -m flowlib.training MODEL --preset {paper,cpu,quick} [--resume] ...``: the trainer's command (`flowlib.training.cli`)."""

import sys

from .cli import main

sys.exit(main())
