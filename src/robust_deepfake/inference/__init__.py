"""Scoring image files with a trained or registered detector (the `predict` command)."""
