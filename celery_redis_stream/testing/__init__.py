"""The testing kit: what the bridge makes of an entry, without a worker or Redis; processes for integration tests.

``preview`` and ``run`` (in ``testing.preview``) take an entry through the worker's own code path;
``testing.processes`` starts a private ``redis-server``, a Redis Cluster or a ``celery worker`` (the
pytest plugin, the project's tests, benchmarks and demo use it), as ``celery.contrib.testing`` does.
"""

from __future__ import annotations

from .preview import DeadLettered, DeadLetterPreview, Preview, preview, run, to_raw

__all__ = ["DeadLetterPreview", "DeadLettered", "Preview", "preview", "run", "to_raw"]
