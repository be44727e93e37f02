"""Reusable parts of the pipeline: models, data, training, evaluation, tracking."""
