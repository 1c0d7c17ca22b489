"""Reading what a sweep wrote, without Ray: status, the best trial and the Pareto front,
the export of the winner and its report.

- :mod:`~tuning.results.status`: ``seltune status`` (counts, best trial, per-trial table);
- :mod:`~tuning.results.selection`: the best trial, the best iteration, the Pareto front
  and the one comparison of values they all use;
- :mod:`~tuning.results.baselines`: the training-free baselines and the verdicts;
- :mod:`~tuning.results.export`: ``seltune export`` (the winner as files);
- :mod:`~tuning.results.html_report`: the HTML report written beside an export.
"""
