"""`python -m ops.bench`: run the benchmark (settings from the environment, see ops.bench.config)."""

import sys

from ops.bench.run import main

sys.exit(main())
