"""Decisions over the pipeline's measurements: what n seeds may claim (claims), the
comparisons in question order and a verdict row (seeds), each pair's per-seed differences
from the sweep and the CAMs (differences), and the champion with the one robustness score
(champion)."""
