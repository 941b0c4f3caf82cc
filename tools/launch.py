"""Launch an experiment: validate every cell, then submit through submitit.

    python tools/launch.py experiments/smoke.yaml --cluster local
    python tools/launch.py experiments/sharing_ablation.yaml --profile slurm/profiles/paper-8x8.yaml
    python tools/launch.py experiments/sharing_ablation.yaml --scale tiny --dry-run
    python tools/launch.py EXPERIMENT.yaml [--cluster slurm|local] [--profile FILE] [--scale paper|tiny]
                           [--only CELL ...] [--dry-run] [--retry-failed] [--runs-dir DIR]

Slurm when sbatch is on PATH, else this machine. Completed, queued and running
cells are skipped; failed ones are submitted again with --retry-failed. A bad
experiment or profile exits with code 2 before anything is submitted. See
avbert/launch/ for the experiment format, the job and requeueing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avbert.launch.launcher import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
