"""MLflow: the store (store), what runs record (runs, tracker), the registry (registry,
register), model cards and where a run comes from (provenance)."""
