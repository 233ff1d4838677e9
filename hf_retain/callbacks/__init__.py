"""Trainer callbacks, one per file (consistency, lineage, regression, adaptive, curriculum)."""
