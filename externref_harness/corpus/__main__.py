"""`python -m externref_harness.corpus --write DIR | --check DIR`: regenerate or check the corpus."""

import sys

from externref_harness.corpus.write import main

sys.exit(main())
