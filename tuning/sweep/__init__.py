"""Driving a sweep on Ray Tune with Optuna and ASHA.

- :mod:`~tuning.sweep.options`: the library's names for the options (declared once, in
  :mod:`tuning.options`);
- :mod:`~tuning.sweep.prepare` and :mod:`~tuning.sweep.space_check`: inputs checked,
  experiment created, spec saved;
- :mod:`~tuning.sweep.driver`: Ray started or joined, the Tuner built and run;
- :mod:`~tuning.sweep.resume` and :mod:`~tuning.sweep.restart`: continuing a sweep;
- :mod:`~tuning.sweep.lock`: the one-driver-per-experiment lock;
- :mod:`~tuning.sweep.callbacks`: the trial ledger and the live table;
- :mod:`~tuning.sweep.searcher` (Optuna TPE), :mod:`~tuning.sweep.scheduler` (ASHA),
  :mod:`~tuning.sweep.space` (search spaces as Optuna distributions),
  :mod:`~tuning.sweep.study` (the study's RDB storage and its writes);
- :mod:`~tuning.sweep.runtime` (starting or joining Ray), :mod:`~tuning.sweep.resources`
  and :mod:`~tuning.sweep.storage_check` (what a cluster must offer before a trial runs);
- :mod:`~tuning.sweep.legacy`: old pickled class paths, for experiments made earlier.

Nothing is imported here: ``seltune sweep --help`` and the results commands stay fast.
"""
