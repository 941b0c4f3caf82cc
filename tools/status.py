"""Where every cell of an experiment stands: ``avbert-status``; ``--help`` for its use."""

import sys

from avbert.launch.status_table import main

if __name__ == "__main__":
    sys.exit(main())
