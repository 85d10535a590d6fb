"""``python -m bench``: the benchmark harness (bench/harness.py); ``bench/run`` runs this."""

import sys

from bench.harness import main

sys.exit(main())
