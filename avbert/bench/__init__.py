"""Benchmarks behind ``tools/bench.py``, one module per concern.

``timing`` (interleaved side-by-side timing), ``layers`` (lowrank against
dense shared layer), ``attention`` (SDPA against matmul-softmax), ``step``
(the whole pretraining step), ``zero_state`` (optimizer state per rank under
ZeRO), ``memory`` (the planner against measured peaks), ``gpu`` (the
paper-scale step on a GPU), ``report`` and ``markdown`` (the record and
``BENCHMARKS.md``).
"""
