"""seltune tuning layer: the only package that imports ray and optuna.

Ray and Optuna are imported lazily inside the functions that need them, so that
``seltune data ...`` and ``seltune train ...`` start fast and work without a cluster.
"""
