"""One batch: prepare (the in-flight record and failure counts: deliveries) -> publish -> commit (batches), paced so
the worker's own tasks keep their share of the GIL (pacing)."""
