"""Launching: experiment files, their expansion into cells, and submission through submitit.

- ``spec``: the experiment file format (strict);
- ``grid``: the experiment's grid expanded, deterministically, into cells with resolved configs;
- ``profile`` and ``resources``: cluster profiles and what a stage's job asks;
- ``actions``: what each launch does with each cell (submit, skip, blocked), and the table it prints;
- ``submit``: Slurm parameters, job arrays, dependencies, local execution;
- ``job`` and ``preemption``: what runs inside a job, and checkpoint-then-requeue;
- ``index`` and ``status``: recording cells and jobs in the experiment index (``avbert.rundir.index``), the
  code snapshot, cell states.

``tools/launch.py`` and ``tools/status.py`` are the entry points.
"""
