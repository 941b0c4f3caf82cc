"""The suite's command lines, installed as console scripts (``setup.cfg``):

=================  ===========================================  ======================
command            what it does                                  module
=================  ===========================================  ======================
``avbert-launch``  plan and submit an experiment                ``avbert.launch.launcher``
``avbert-status``  where every cell of an experiment stands     ``avbert.launch.status_table``
``avbert-collect`` the paper's tables from the runs             ``avbert.cli.collect``
``avbert-prepare`` a dataset's manifest from its videos         ``avbert.cli.prepare``
``avbert-params``  parameter counts of the model variants       ``avbert.cli.params``
``avbert-plan``    memory plan of a config on a GPU             ``avbert.cli.plan``
=================  ===========================================  ======================

``python tools/<name>.py`` runs the same ``main`` from a checkout. This package sits
on top of the others: nothing in the suite imports it.
"""
