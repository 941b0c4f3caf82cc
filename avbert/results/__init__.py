"""Results: downstream metrics and the paper's tables from the run directories.

- ``runs``: one run directory read back (config, metrics, status, eval, cost);
- ``experiments``: an experiment's cells, as its index recorded them, grouped into table rows;
- ``tables``: the sharing, negative-sampling, fusion and downstream layouts;
- ``render``: Markdown, CSV, JSON and the terminal table; ``plots``: the figures;
- ``collect``: ``collect(experiments, runs_dir, out_dir, formats) -> {name: Table}``.
"""
