"""seltune's tuning layer: everything that drives Ray Tune and Optuna, and reads what a
sweep wrote. ``core`` and ``search_spaces`` never import it.

- :mod:`tuning.sweep`: a sweep on Ray Tune with Optuna TPE and ASHA (options,
  validation, the driver, searcher, scheduler, study storage, resume, Ray runtime);
- :mod:`tuning.experiment`: what a sweep writes (the experiment directory, its spec,
  records, object-store mirror, signatures);
- :mod:`tuning.results`: Ray-free readers of an experiment (status, export, the HTML
  report, baselines);
- :mod:`tuning.trainables`: what each trainable is and how a trial runs it;
- :mod:`tuning.cli`: the ``seltune`` command; :mod:`tuning.terminal`: its output helpers;
  :mod:`tuning.options`: the options of ``seltune sweep``/``resume``, declared once.

This package imports nothing itself. Ray is imported only by the modules of
:mod:`tuning.sweep` (and the trial code in :mod:`tuning.trainables`); Optuna also by
the report when it reads the study. The command modules import neither at import
time (each command imports what it runs), so ``seltune --help`` and ``seltune data ...``
start without them, and ``seltune status`` without Ray.
"""
