"""Evaluation: input vs output scores of a model on a test set (score.py), and the metrics."""
