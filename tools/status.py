"""Where every cell of an experiment stands.

    python tools/status.py                      # every experiment under runs/
    python tools/status.py sharing_ablation     # one experiment (a name or its YAML file)
    python tools/status.py smoke --runs-dir /scratch/runs

One table per experiment: state (Slurm's squeue/sacct, the local executor or the run's
status.json), step of total, last loss, ETA, requeues, age of the last complete
checkpoint and the log file. Works without Slurm installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avbert.launch.status_table import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
