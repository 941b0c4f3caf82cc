"""Results: downstream metrics and the paper's tables from the run directories.

- ``metrics``: view aggregation, top-k accuracy, mAP (Charades convention);
- ``runs``: one run directory read back (config, metrics, status, eval, cost);
- ``experiments``: an experiment's cells (from the launcher's registry) as table rows;
- ``tables``: the sharing, negative-sampling, fusion and downstream layouts;
- ``render``: Markdown, CSV, JSON and the terminal table; ``plots``: the figures;
- ``collect``: ``collect(experiments, runs_dir, out_dir, formats) -> {name: Table}``.
"""
