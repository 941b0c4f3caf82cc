"""The run directory and the experiment index, as files: their names, the one atomic
writer and the tolerant readers every package uses, the scheduler states, and the one
decision of where a cell stands from both (``decide_cell_state``).

A run directory (``<runs_dir>/<experiment>/<variant>/<stage>/``) holds ``config.yaml``
(the resolved config), ``metrics.jsonl`` (one flat JSON object per log step, appended),
``status.json`` (state, step, total steps, last loss, device, error), ``eval.json`` (a
downstream stage's evaluation), ``job.json`` (the job's starts and stops), ``export/``
and ``checkpoints/``. ``<runs_dir>/<experiment>/index.json`` is the launcher's record
of every cell's job. ``status.json``, a ``metrics.jsonl`` line and ``eval.json`` are read
and written as typed records (``RunStatus``, ``MetricsLine``, ``EvalRecord``).

Every JSON file is replaced whole (``write_json``: written beside, then renamed), so a
reader sees the old file or the new one, never half of one. ``metrics.jsonl`` is the one
file appended to; ``read_jsonl`` skips (and counts) a line a killed writer left half
written. The readers never raise on a missing, truncated or malformed file: they return
None or what could be read.

This package imports nothing else of the suite: training writes these files, the
launcher, ``tools/status.py`` and ``collect`` read them.
"""

from avbert.rundir.files import (CONFIG, EVAL, INDEX, JOURNAL, METRICS, STATUS, file_sha256, read_json,
                                 read_jsonl, read_yaml_mapping, replaced_on_success, write_json, write_text)
from avbert.rundir.records import EvalRecord, MetricsLine, RunState, RunStatus, as_run_status
from avbert.rundir.state import (EVALUATED_KINDS, FAILED_JOB_STATES, LIVE_JOB_STATES, PENDING_JOB_STATES,
                                 PREEMPT_REQUEUE_GRACE_S, PREEMPTED_JOB_STATES, RUNNING_JOB_STATES, CellKind,
                                 CellState, decide_cell_state, job_state_kind)

__all__ = ["CONFIG", "EVAL", "INDEX", "JOURNAL", "METRICS", "STATUS", "file_sha256", "read_json", "read_jsonl",
           "read_yaml_mapping", "replaced_on_success", "write_json", "write_text", "FAILED_JOB_STATES",
           "LIVE_JOB_STATES", "PENDING_JOB_STATES", "PREEMPTED_JOB_STATES", "RUNNING_JOB_STATES",
           "RunState", "job_state_kind", "EVALUATED_KINDS", "PREEMPT_REQUEUE_GRACE_S", "CellKind", "CellState",
           "decide_cell_state", "EvalRecord", "MetricsLine", "RunStatus", "as_run_status"]
