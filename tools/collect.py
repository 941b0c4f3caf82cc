"""The paper's tables from the run directories: ``avbert-collect``; ``--help`` for its use."""

import sys

from avbert.cli.collect import main

if __name__ == "__main__":
    sys.exit(main())
