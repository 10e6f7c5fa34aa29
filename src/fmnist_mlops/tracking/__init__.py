"""Where MLflow stores things and what every run carries; the stage context built on it."""
