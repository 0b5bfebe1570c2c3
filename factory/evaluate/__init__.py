"""Evaluation of synthetic data: the judge classifier (judge.py), image, label, report and regression
metrics (metrics.py), and the `medsynth evaluate` command (cli.py)."""
