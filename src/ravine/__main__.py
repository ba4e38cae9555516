"""``python -m ravine`` runs the command line."""

import sys

from ravine.cli.main import main

sys.exit(main())
