"""Prefect flows around the library: run the DVC pipeline (pipeline.py), re-evaluate the
registered models on a schedule (reevaluate.py), and serve both (`python -m flows.serve`
from the repository root). The flows stay thin; the logic is in robust_deepfake."""
