"""Training with lineage: pipelines, snapshots, MLflow logging, registry gate, the CLI."""
