"""`python -m externref_harness.cli ARGS`: the console script without the installed wrapper."""

import sys

from externref_harness.cli.main import main

sys.exit(main())
