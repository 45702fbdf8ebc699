"""Decisions over the pipeline's measurements: seed-level intervals (seeds), reg - baseline
differences from the sweep and the CAMs (differences), and the champion with the one
robustness score (champion)."""
