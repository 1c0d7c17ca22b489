"""Declarative hyperparameter search spaces (stdlib only)."""
