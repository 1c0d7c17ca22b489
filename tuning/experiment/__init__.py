"""What a sweep writes on disk, and how every command reads it back (no Ray here).

- :mod:`~tuning.experiment.layout`: names, the directory layout, storage and lookup;
- :mod:`~tuning.experiment.spec`: the saved sweep spec (``seltune/sweep.json``);
- :mod:`~tuning.experiment.records`: the trial ledger, the baselines, ASHA's state, and
  the typed records (trial states, ledger entries, the status, the export metrics);
- :mod:`~tuning.experiment.mirror`: experiments in object storage (a local mirror);
- :mod:`~tuning.experiment.trust`: signatures over the pickles Ray Tune writes.
"""
