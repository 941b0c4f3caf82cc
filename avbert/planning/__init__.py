"""Per-GPU memory planning: predict a config's peak memory and the largest batch that fits.

``plan(cfg, gpu_memory_bytes, world_size)`` returns a ``MemoryPlan``; the
method is described in ``memory.py`` (model states, ZeRO buffers) and
``activations.py`` (activations counted on fake tensors); ``measure.py``
measures real peaks on the CPU to check it.
"""

from avbert.planning.memory import MemoryPlan, format_bytes, parse_memory, plan

__all__ = ["MemoryPlan", "format_bytes", "parse_memory", "plan"]
