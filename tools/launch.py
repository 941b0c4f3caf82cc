"""Plan and submit an experiment: ``avbert-launch``; ``--help`` for its use."""

import sys

from avbert.launch.launcher import main

if __name__ == "__main__":
    sys.exit(main())
