"""Studies: a grid of DVC experiments (seed x regularizer setting x held-out method), run
as Prefect flow runs on a work pool, aggregated into one report (flows/study.py)."""
