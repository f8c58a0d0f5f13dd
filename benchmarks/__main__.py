"""``python -m benchmarks``: the same as ``pulse bench``."""

import sys

from benchmarks.harness import main

sys.exit(main())
