"""A dataset's manifest from its videos: ``avbert-prepare``; ``--help`` for its use."""

import sys

from avbert.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
