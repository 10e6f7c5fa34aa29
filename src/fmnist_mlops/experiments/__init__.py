"""Experiments made of many runs.

Hydra sweeps, Optuna studies, and cleaning up what old ones leave.
"""
