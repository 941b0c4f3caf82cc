#!/usr/bin/env bash
# Install what the tests need and run the whole suite, Slurm tests included.
#
#   bash tests/run.sh [pytest args...]
#
# Creates .venv if missing, installs the suite with its test extras, brings up
# the single-node Slurm cluster on localhost (slurm/local-cluster/start.sh)
# for the tests marked `slurm`, and stops it again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

started_cluster=0
if [ "${AVBERT_SKIP_SLURM:-0}" != 1 ] && [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: not root, so the local Slurm cluster cannot be started: the Slurm tests are skipped"
  export AVBERT_SKIP_SLURM=1
fi
if [ "${AVBERT_SKIP_SLURM:-0}" != 1 ] && [ -x slurm/local-cluster/start.sh ]; then
  bash slurm/local-cluster/start.sh
  started_cluster=1
fi
cleanup() { if [ "$started_cluster" = 1 ]; then bash slurm/local-cluster/stop.sh || true; fi; }
trap cleanup EXIT

export DS_ACCELERATOR=cpu
.venv/bin/python -m pytest "$@"
