"""The study report: per-cell records aggregated into points and paired comparisons,
answered in words, tables and figures (`build_study_report`)."""

from robust_deepfake.study.report.build import build_study_report

__all__ = ["build_study_report"]
