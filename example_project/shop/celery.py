"""The project's Celery app: Django settings under the CELERY_ namespace, plus the stream reader."""

import os

from celery import Celery

import celery_redis_stream

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
# CELERY_STREAM_TASKS in settings.py becomes app.conf.stream_tasks, and so on.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The bootstep that reads the mapped streams in every `celery -A shop worker`.
celery_redis_stream.install(app)
