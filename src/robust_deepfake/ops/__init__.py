"""MLOps plumbing: MLflow tracking and registry, DVC/Prefect orchestration, scheduled re-evaluation."""
