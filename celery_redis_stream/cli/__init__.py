"""`celery redis-stream ...`: the operator commands, registered as the ``celery.commands`` entry point.

``commands`` holds the group with ``status`` and ``inspect``; ``reset`` and ``dead_letters`` their
commands; ``common`` what they share; ``terminal`` control-character-safe text.
"""

from __future__ import annotations

from .commands import redis_stream

__all__ = ["redis_stream"]
