"""The tracking store: the run schema, the one MLflow adapter, checkpoints, locks and claims.

May import ``grid`` and ``orchestrator.errors``; nothing above it.
"""
