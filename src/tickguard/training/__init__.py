"""Training the fraud model: pipeline, Optuna tuning, threshold choice, evaluation (notebooks call this)."""
