"""Memory plan of a config on a GPU: ``avbert-plan``; ``--help`` for its use."""

import sys

from avbert.cli.plan import main

if __name__ == "__main__":
    sys.exit(main())
