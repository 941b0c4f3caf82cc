"""Parameter counts of the model variants: ``avbert-params``; ``--help`` for its use."""

import sys

from avbert.cli.params import main

if __name__ == "__main__":
    sys.exit(main())
