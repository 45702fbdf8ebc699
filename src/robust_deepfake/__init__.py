"""Robust deepfake detection: a reproducible DVC + MLflow + Prefect pipeline."""

__version__ = "0.1.0"
