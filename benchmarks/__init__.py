"""Benchmarks of the bridge against Celery's own publish loops (run benchmarks/run.py)."""
