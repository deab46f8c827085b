"""`python -m fiddler_nb.cli ...` runs the `fiddler-nb` command."""

import sys

from .main import main

sys.exit(main())
