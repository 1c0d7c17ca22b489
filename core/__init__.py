"""seltune core: pure numpy/torch science (data bundles, models, losses, training loops,
calibration, metrics, baselines, checkpoints). Never imports ray, optuna or tuning."""
