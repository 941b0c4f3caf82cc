"""Launching: experiment files, their expansion into cells, and submission through submitit.

- ``spec``: the experiment file format (strict);
- ``registry``: deterministic expansion into cells with resolved configs;
- ``profile`` and ``resources``: cluster profiles and what a stage's job asks;
- ``plan``: what each launch does with each cell, and the dry-run table;
- ``submit``: Slurm parameters, job arrays, dependencies, local execution;
- ``job`` and ``preemption``: what runs inside a job, and checkpoint-then-requeue;
- ``index`` and ``status``: the experiment index, the code snapshot, cell states.

``tools/launch.py`` and ``tools/status.py`` are the entry points.
"""
