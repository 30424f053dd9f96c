"""Evaluation protocols: retrain fresh networks on a synthetic set and report test accuracy."""
