#!/usr/bin/env python3
"""`make bench`'s entry: Benchmarks/run runs this file with the distribution's python3. The benchmark itself is the
package vsabench beside it (vsabench/__init__.py says what it measures and how to run it; Benchmarks/run --help lists
the options). This file stays as the entry: a run locks it (one run at a time, as before the package), and
BENCHMARKS.md and the docs name it."""

import sys

from vsabench.cli import main
from vsabench.common import log

if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped and removed")
        sys.exit(130)
